"""Many agents, one bucket (issue 14, item 3): four CLI agents sync four sources into one s3
repository at the same moment while a prune runs beside them; nothing is lost (every point
`check --read-data` is clean, restores are byte-exact) and a file every source holds is stored
once (its chunks are in exactly one pack)."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from pathlib import Path

from protectctl.engine.crypto import Sealer
from protectctl.engine.index import decode_index
from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.s3 import S3Credentials, S3Location, S3Storage
from tests.conftest import cli_argv, cli_env, run_cli
from tests.integration.test_s3_cli import s3_policy
from tests.seaweed import ADMIN, Seaweed

ENV = {"S3_ADMIN_KEY": ADMIN[0], "S3_ADMIN_SECRET": ADMIN[1]}
AGENTS = 4
SHARED = os.urandom(1 << 20)  # one file every source holds (two chunks or so)


def _policy(directory: Path, endpoint: str, bucket: str) -> Path:
    members = "".join(f"    - {{name: m{i}, host: local, filesystem: {{path: ./data{i}}}}}\n" for i in range(AGENTS))
    return s3_policy(directory, endpoint, bucket, members=members)


def _write_sources(policy: Path, round_: int) -> None:
    for i in range(AGENTS):
        data = policy / f"data{i}"
        data.mkdir(exist_ok=True)
        (data / "shared.bin").write_bytes(SHARED)
        (data / f"own-{round_}.bin").write_bytes(os.urandom(200_000))
        (data / "note.txt").write_text(f"source {i} round {round_}\n")


def _all_at_once(policy: Path) -> None:
    """Every agent's sync and a prune, started together; each must succeed."""
    argvs = [cli_argv(policy, "run", "sync", "docs", "--member", f"m{i}") for i in range(AGENTS)]
    argvs.append(cli_argv(policy, "prune", "docs"))
    procs = [
        subprocess.Popen(
            a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(ENV), stdin=subprocess.DEVNULL
        )
        for a in argvs
    ]
    for argv, proc in zip(argvs, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "Traceback" not in err, f"{argv[3:]} exited {proc.returncode}\n{out}\n{err}"


def _points_and_copies(storage: S3Storage, policy: Path) -> tuple[dict[str, int], list[int]]:
    """Points per source, and for each chunk of shared.bin in how many packs (over every index
    object) it is stored."""
    passphrase = (policy / ".protectctl" / "passphrase").read_bytes().strip()
    with Repository.open(storage, passphrase) as repo:
        per_source: dict[str, int] = {}
        for p in repo.list_points():
            per_source[p.source] = per_source.get(p.source, 0) + 1
        point = next(p for p in repo.list_points() if p.source == "docs/m0")
        assert point.tree is not None
        node = next(n for n in repo.load_tree(point.tree).nodes if n.name == b"shared.bin")
        sealer: Sealer = repo.sealer
        packs: dict[bytes, set[str]] = {bytes(c): set() for c in node.chunks}
        for info in storage.list(ObjectKind.INDEX):
            stored = storage.get(ObjectKind.INDEX, info.name)
            for pack, entries in decode_index(sealer, info.name, stored).packs.items():
                for entry in entries:
                    if bytes(entry.blob_id) in packs:
                        packs[bytes(entry.blob_id)].add(pack)
    return per_source, [len(p) for p in packs.values()]


def test_four_agents_and_a_prune_share_one_bucket(seaweed: Seaweed, tmp_path: Path) -> None:
    bucket = seaweed.new_bucket()
    policy = _policy(tmp_path / "p", seaweed.endpoint, bucket)
    run_cli(policy, "apply", "--auto-approve", env=ENV)
    _write_sources(policy, 0)
    run_cli(policy, "run", "sync", "docs", "--member", "m0", env=ENV)  # the shared file arrives once
    _write_sources(policy, 1)
    _all_at_once(policy)
    check = json.loads(run_cli(policy, "--json", "check", "objects", "--read-data", env=ENV).stdout)
    assert check["ok"] and not check["errors"] and check["affected_points"] == []
    last = AGENTS - 1  # check read every byte of every point; one restore shows the path
    run_cli(policy, "restore", f"docs/m{last}", "--to-time", "latest", "--target", str(tmp_path / "r"), env=ENV)
    diff = filecmp.dircmp(policy / f"data{last}", tmp_path / "r")
    assert not diff.diff_files and not diff.left_only and not diff.right_only
    storage = S3Storage(S3Location(bucket, "site-a/", seaweed.endpoint), S3Credentials(*ADMIN))
    per_source, copies = _points_and_copies(storage, policy)
    assert per_source == {"docs/m0": 2, **{f"docs/m{i}": 1 for i in range(1, AGENTS)}}
    assert copies and all(n == 1 for n in copies), copies
