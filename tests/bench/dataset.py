"""Deterministic benchmark dataset: build it, then mutate it by a fraction of its size.

The same (size, seed) always gives byte-identical trees, and the same mutate steps applied to
them give byte-identical results, so runs on different days and machines compare.

Layout for the default 1 GiB (every count and large size scales linearly with ``size``)::

    small/dNN/fNNNN.{txt,bin}   ~4,000 files of 4-64 KiB        (~133 MiB)
    medium/mNNN.{txt,bin}       files of 1-16 MiB               (fills the rest)
    large/lN.{txt,bin}          8 files of 64 MiB               (512 MiB)

``.txt`` files are text-like (zstd level 3 shrinks them to roughly 30 %), ``.bin`` files are
random (incompressible); each class holds about half the bytes. Content never repeats at the
scale of a chunk (text is drawn from a pool of lines at random), so deduplication across files
does not flatter any tool.

Usage as a script::

    python tests/bench/dataset.py build DIR [--size 1GiB] [--seed 1]
    python tests/bench/dataset.py mutate DIR --fraction 0.01 --step 1 [--seed 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
DEFAULT_SIZE = GiB
DEFAULT_SEED = 1

_SMALL_PER_GIB = 4000
_SMALL_MIN, _SMALL_MAX = 4 * KiB, 64 * KiB
_SMALL_PER_DIR = 100
_LARGE_COUNT = 8
_LARGE_PER_GIB = 64 * MiB
_MEDIUM_MIN_PER_GIB, _MEDIUM_MAX_PER_GIB = 1 * MiB, 16 * MiB
_MIN_FILE = 4 * KiB
_WRITE_BLOCK = 4 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1GiB', '64MiB', '512M', '1.5G', '1048576' -> bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 1GiB, 64MiB, 8M)")
    number, unit = float(m.group(1)), m.group(2).upper()
    return int(number * {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}[unit])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# ---------------------------------------------------------------- content generators


@lru_cache(maxsize=4)
def _line_pool(seed: int) -> tuple[bytes, ...]:
    """65,536 text lines (~150 bytes each) built from a seeded vocabulary."""
    rnd = random.Random(f"protectctl-bench:{seed}:vocabulary")
    letters = b"etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1]
    words = [bytes(rnd.choices(letters, weights, k=rnd.randint(2, 11))) for _ in range(4096)]
    phrases = [b" ".join(rnd.choices(words, k=rnd.randint(3, 9))) for _ in range(16384)]
    pick = rnd.randrange
    lines = []
    for i in range(65536):
        body = b", ".join(phrases[pick(16384)] for _ in range(pick(1, 5)))
        lines.append(b"%05d " % i + body + b".\n")
    return tuple(lines)


def _text(seed: int, key: str, n: int) -> bytes:
    """n bytes of text-like content, a function of (seed, key, n) only."""
    if n <= 0:
        return b""
    pool = _line_pool(seed)
    rnd = random.Random(f"protectctl-bench:{seed}:text:{key}")
    count = n // 100 + 8  # lines average ~150 bytes: more than enough
    out = b"".join(map(pool.__getitem__, memoryview(rnd.randbytes(2 * count)).cast("H")))
    while len(out) < n:  # very unlikely; keeps the contract for any n
        out += b"".join(map(pool.__getitem__, memoryview(rnd.randbytes(2 * count)).cast("H")))
    return out[:n]


def _random(seed: int, key: str, n: int) -> bytes:
    """n incompressible bytes (AES-256-CTR keystream keyed by (seed, key))."""
    k = hashlib.sha256(f"protectctl-bench:{seed}:random:{key}".encode()).digest()
    return Cipher(algorithms.AES(k), modes.CTR(bytes(16))).encryptor().update(bytes(n))


def content(seed: int, key: str, n: int, text: bool) -> bytes:
    return _text(seed, key, n) if text else _random(seed, key, n)


def _write_file(path: Path, seed: int, key: str, size: int, text: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        done = 0
        part = 0
        while done < size:
            n = min(_WRITE_BLOCK, size - done)
            f.write(content(seed, f"{key}#{part}", n, text))
            done += n
            part += 1


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class FileSpec:
    rel: str
    size: int

    @property
    def text(self) -> bool:
        return self.rel.endswith(".txt")


def layout(size: int, seed: int = DEFAULT_SEED) -> list[FileSpec]:
    """The files of a dataset of about ``size`` bytes (exactly ``size`` when size >= 64 KiB)."""
    scale = size / GiB
    rnd = random.Random(f"protectctl-bench:{seed}:layout:{size}")
    specs: list[FileSpec] = []
    budget = size

    n_small = max(8, round(_SMALL_PER_GIB * scale))
    small_cap = max(_MIN_FILE, min(_SMALL_MAX, size // (4 * n_small)))  # small files <= ~1/4 of a tiny set
    for i in range(n_small):
        s = rnd.randint(min(_SMALL_MIN, small_cap), small_cap)
        s = min(s, budget)
        if s <= 0:
            break
        ext = "txt" if i % 2 == 0 else "bin"
        specs.append(FileSpec(f"small/d{i // _SMALL_PER_DIR:02d}/f{i:04d}.{ext}", s))
        budget -= s

    large_size = max(_MIN_FILE, int(_LARGE_PER_GIB * scale))
    for i in range(_LARGE_COUNT):
        s = min(large_size, budget)
        if s <= 0:
            break
        ext = "txt" if i % 2 == 0 else "bin"
        specs.append(FileSpec(f"large/l{i}.{ext}", s))
        budget -= s

    lo = max(_MIN_FILE, int(_MEDIUM_MIN_PER_GIB * scale))
    hi = max(lo, int(_MEDIUM_MAX_PER_GIB * scale))
    i = 0
    while budget > 0:
        s = rnd.randint(lo, hi)
        if budget - s < lo:  # the last one takes the remainder
            s = budget
        # alternate by bytes so text and random stay near half each
        text_bytes = sum(f.size for f in specs if f.text)
        ext = "txt" if text_bytes <= (size - budget) / 2 else "bin"
        specs.append(FileSpec(f"medium/m{i:03d}.{ext}", s))
        budget -= s
        i += 1
    return specs


def build(root: Path, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Create the dataset under ``root`` (which must be empty or absent). Returns a summary."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    specs = layout(size, seed)
    for spec in specs:
        _write_file(root / spec.rel, seed, f"base:{spec.rel}", spec.size, spec.text)
    return {
        "files": len(specs),
        "bytes": sum(s.size for s in specs),
        "text_bytes": sum(s.size for s in specs if s.text),
        "random_bytes": sum(s.size for s in specs if not s.text),
        "small_files": sum(1 for s in specs if s.rel.startswith("small/")),
        "large_files": sum(1 for s in specs if s.rel.startswith("large/")),
        "medium_files": sum(1 for s in specs if s.rel.startswith("medium/")),
        "seed": seed,
    }


# ---------------------------------------------------------------- mutation


@dataclass
class MutationReport:
    step: int
    fraction: float
    target_bytes: int
    overwritten_bytes: int = 0
    appended_bytes: int = 0
    added_bytes: int = 0
    files_overwritten: int = 0
    files_appended: int = 0
    files_added: int = 0
    files_deleted: int = 0
    deleted_bytes: int = 0
    changed: list[str] = field(default_factory=list)

    @property
    def changed_bytes(self) -> int:
        return self.overwritten_bytes + self.appended_bytes + self.added_bytes

    def summary(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("changed")
        d["changed_bytes"] = self.changed_bytes
        return d


def _tree(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            out.append((p.relative_to(root).as_posix(), p.stat().st_size))
    return sorted(out)


def mutate(root: Path, fraction: float, step: int, seed: int = DEFAULT_SEED) -> MutationReport:
    """Change about ``fraction`` of the tree's bytes, deterministically for (tree, fraction, step, seed).

    Budget (of fraction x total bytes): 50 % overwritten in place (regions of medium/large files,
    whole small files), 20 % appended (to medium/large and small text files), 30 % new files
    (small ones plus one medium one). Besides, about fraction/4 of the files are deleted.
    """
    root = Path(root)
    files = _tree(root)
    total = sum(s for _, s in files)
    rnd = random.Random(f"protectctl-bench:{seed}:mutate:{step}:{fraction}")
    rep = MutationReport(step=step, fraction=fraction, target_bytes=int(total * fraction))
    scale = total / GiB
    big = [(r, s) for r, s in files if not r.startswith("small/")]
    small = [(r, s) for r, s in files if r.startswith("small/")]

    def key(*parts: object) -> str:
        return ":".join(str(p) for p in ("mut", step, *parts))

    # 1. deletions (small files only, so the byte budget below stays meaningful)
    n_delete = max(1, round(len(files) * fraction / 4))
    doomed = set(rnd.sample(range(len(small)), min(n_delete, max(0, len(small) - 1)))) if small else set()
    for i in sorted(doomed):
        rel, s = small[i]
        (root / rel).unlink()
        rep.files_deleted += 1
        rep.deleted_bytes += s
    small = [f for i, f in enumerate(small) if i not in doomed]

    # 2. in-place overwrites: 40 % of the budget in regions of big files, 10 % as whole small files
    region_budget = int(rep.target_bytes * 0.4)
    region_max = max(16 * KiB, int(4 * MiB * scale))
    touched: set[str] = set()
    while region_budget > 0 and big:
        rel, s = big[rnd.randrange(len(big))]
        n = min(rnd.randint(max(4 * KiB, region_max // 16), region_max), region_budget, s)
        off = rnd.randrange(0, s - n + 1)
        with open(root / rel, "r+b") as f:
            f.seek(off)
            f.write(content(seed, key("ow", rel, off), n, rel.endswith(".txt")))
        rep.overwritten_bytes += n
        region_budget -= n
        touched.add(rel)
    small_budget = int(rep.target_bytes * 0.1)
    order = rnd.sample(range(len(small)), len(small))
    for i in order:
        if small_budget <= 0:
            break
        rel, s = small[i]
        _write_file(root / rel, seed, key("rw", rel), s, rel.endswith(".txt"))
        rep.overwritten_bytes += s
        small_budget -= s
        touched.add(rel)

    # 3. appends: 20 % of the budget, a third to small text files (log-like), the rest to big files
    append_budget = int(rep.target_bytes * 0.2)
    appended: set[str] = set()
    small_txt = [(r, s) for r, s in small if r.endswith(".txt")]
    log_budget = append_budget // 3
    while log_budget > 0 and small_txt:
        rel, _ = small_txt[rnd.randrange(len(small_txt))]
        n = min(rnd.randint(256, 8 * KiB), log_budget)
        with open(root / rel, "ab") as fa:
            fa.write(content(seed, key("ap", rel, log_budget), n, True))
        rep.appended_bytes += n
        log_budget -= n
        append_budget -= n
        appended.add(rel)
    while append_budget > 0 and big:
        rel, _ = big[rnd.randrange(len(big))]
        n = min(rnd.randint(max(4 * KiB, region_max // 8), max(8 * KiB, region_max)), append_budget)
        with open(root / rel, "ab") as fa:
            fa.write(content(seed, key("ap", rel, append_budget), n, rel.endswith(".txt")))
        rep.appended_bytes += n
        append_budget -= n
        appended.add(rel)
    rep.files_overwritten = len(touched)
    rep.files_appended = len(appended)

    # 4. new files: 30 % of the budget, one medium file (half of it) plus small files
    add_budget = rep.target_bytes - rep.overwritten_bytes - rep.appended_bytes
    if add_budget >= 2 * _SMALL_MAX:
        rel = f"medium/new-{step}.{'txt' if step % 2 else 'bin'}"
        n = add_budget // 2
        _write_file(root / rel, seed, key("new", rel), n, rel.endswith(".txt"))
        rep.added_bytes += n
        rep.files_added += 1
        add_budget -= n
        rep.changed.append(rel)
    i = 0
    while add_budget > 0:
        n = min(rnd.randint(_SMALL_MIN, _SMALL_MAX), add_budget)
        rel = f"small/new-{step}/n{i:04d}.{'txt' if i % 2 == 0 else 'bin'}"
        _write_file(root / rel, seed, key("new", rel), n, rel.endswith(".txt"))
        rep.added_bytes += n
        rep.files_added += 1
        add_budget -= n
        rep.changed.append(rel)
        i += 1
    rep.changed.extend(sorted(touched | appended))
    return rep


# ---------------------------------------------------------------- manifests


def manifest(root: Path, hash_files: bool = True) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256 hex or '')} of every regular file under root."""
    out: dict[str, tuple[int, str]] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if not hash_files:
                out[rel] = (p.stat().st_size, "")
                continue
            h = hashlib.sha256()
            size = 0
            with open(p, "rb", buffering=0) as f:
                while block := f.read(_WRITE_BLOCK):
                    h.update(block)
                    size += len(block)
            out[rel] = (size, h.hexdigest())
    return out


def compare(expected: dict[str, tuple[int, str]], actual: dict[str, tuple[int, str]], limit: int = 10) -> list[str]:
    """Differences between two manifests, at most ``limit`` lines (empty: identical)."""
    problems = []
    for rel in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing: {rel}")
    for rel in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected: {rel}")
    for rel in sorted(expected.keys() & actual.keys()):
        if expected[rel] != actual[rel]:
            problems.append(f"differs: {rel} (size {expected[rel][0]} -> {actual[rel][0]})")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more"]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("--size", default="1GiB")
    b.add_argument("--seed", type=int, default=DEFAULT_SEED)
    m = sub.add_parser("mutate")
    m.add_argument("dir", type=Path)
    m.add_argument("--fraction", type=float, required=True)
    m.add_argument("--step", type=int, required=True)
    m.add_argument("--seed", type=int, default=DEFAULT_SEED)
    h = sub.add_parser("manifest")
    h.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(json.dumps(build(args.dir, parse_size(args.size), args.seed), indent=2))
    elif args.cmd == "mutate":
        print(json.dumps(mutate(args.dir, args.fraction, args.step, args.seed).summary(), indent=2))
    else:
        digest = hashlib.sha256(json.dumps(sorted(manifest(args.dir).items())).encode()).hexdigest()
        print(digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
