"""Browsing recovery points (issue 15): ls, cat, versions, diff, find, removed groups, absolute paths.

One repository for the module: the quick start applied once, then 20 syncs made in-process, with
a known change set per point (a.txt changes in 5 of them, point 10 -> 11 adds, removes and
modifies known paths). Tests only read it, or work on their own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protectctl import api
from protectctl.browse.view import FileContent, PointTrees
from protectctl.progress import NullProgress
from tests.conftest import cli_argv, cli_env, copy_example, run_cli, wait_until

Capture = pytest.CaptureFixture[bytes]
POINTS = 20
A_CHANGES = (0, 4, 8, 12, 16)  # a.txt is written in these points: 5 versions
BIG = os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(100_000)  # several chunks


@dataclass
class History:
    policy: Path
    data: Path
    points: list[str]  # point ids, oldest first
    times: list[str]  # their times (ISO 8601)
    a_texts: dict[int, bytes]  # a.txt's content at each point


def _write(path: Path, content: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))


def cli(capsys: Capture, policy: Path, *args: str, expect: int = 0) -> tuple[str, str]:
    """The CLI in-process (its one error handler included): ~1 s of interpreter start-up saved per
    call; tests that need the real console script use `run_cli`."""
    from protectctl.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["-C", str(policy), *args])
    out, err = capsys.readouterr()
    text_out, text_err = out.decode(errors="replace"), err.decode(errors="replace")
    assert ended.value.code == expect, (args, ended.value.code, text_out, text_err)
    assert "Traceback" not in text_err and "internal error" not in text_err, text_err
    return text_out, text_err


def fast_repository(policy: Path) -> None:
    """The quick start's repository made before apply (which adopts it) with a cheap KDF: every
    open costs ~1 ms instead of ~0.3 s of scrypt."""
    from protectctl.engine.repository import Repository
    from protectctl.engine.storage.local import LocalStorage

    secret = policy / ".protectctl" / "passphrase"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("browse-test-passphrase-0123456789\n")
    secret.chmod(0o600)
    passphrase = api.passphrase_reader({"passphrase": {"file": str(secret)}})()
    Repository.init(LocalStorage(policy / ".protectctl" / "repo"), passphrase, kdf_n=2**10).close()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    base = tmp_path_factory.mktemp("browse")
    policy = copy_example("quickstart", base / "qs")
    data = policy / "data"
    fast_repository(policy)
    run_cli(policy, "-q", "apply", "--auto-approve")
    mtime = 1_700_000_000
    texts: dict[int, bytes] = {}
    _write(data / "keep" / "same.txt", b"never changes\n", mtime)
    _write(data / "big.bin", BIG, mtime)
    with (data / "sparse.img").open("wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    _write(data / "m.txt", b"before\n", mtime)
    _write(data / "gone.txt", b"will go\n", mtime)
    ids: list[str] = []
    times: list[str] = []
    text = b""
    for i in range(POINTS):
        if i in A_CHANGES:
            text = f"version {i}\n".encode()
            _write(data / "a.txt", text, mtime + i)
        if i == 11:
            _write(data / "new" / "x.txt", b"added\n", mtime + i)
            (data / "gone.txt").unlink()
            _write(data / "m.txt", b"after!\n", mtime + i)
        texts[i] = text
        (result,) = api.run_backup(policy, "sync", "docs", None, agent_config=None, progress=NullProgress())
        assert result.ok, result
        ids.append(result.point_id)
        times.append(result.time.isoformat())
    yield History(policy, data, ids, times, texts)
    shutil.rmtree(base, ignore_errors=True)


def test_ls_shows_a_point_tree_relative_absolute_and_json(history: History, capsysbinary: Capture) -> None:
    out = cli(capsysbinary, history.policy, "ls", "docs/home")[0].split()
    assert out == ["a.txt", "big.bin", "hello.txt", "keep/", "m.txt", "new/", "report.txt", "sparse.img"]
    old = cli(capsysbinary, history.policy, "ls", "docs/home", "--to-time", history.points[10])[0].split()
    assert "gone.txt" in old and "new/" not in old
    long = cli(capsysbinary, history.policy, "ls", "-l", "docs/home", "keep")[0]
    assert long.startswith("-rw-") and "same.txt" in long and "2023-11-14T22:13:20" in long
    absolute = str(history.data.resolve() / "keep")
    doc = json.loads(cli(capsysbinary, history.policy, "ls", "docs/home", absolute, "--json")[0])
    assert doc["format_version"] == "1.0" and doc["point"]["id"] == history.points[-1]
    (entry,) = doc["entries"]
    assert entry["name"] == "same.txt" and entry["size"] == 14 and entry["path"] == absolute + "/same.txt"


def test_versions_lists_each_distinct_version(history: History, capsysbinary: Capture) -> None:
    doc = json.loads(cli(capsysbinary, history.policy, "versions", "docs/home", "a.txt", "--json")[0])
    assert doc["format_version"] == "1.0" and doc["points_searched"] == POINTS
    versions = doc["versions"]
    assert len(versions) == len(A_CHANGES)
    assert [v["first_point"]["id"] for v in versions] == [history.points[i] for i in A_CHANGES]
    assert [v["points"] for v in versions] == [4, 4, 4, 4, 4]
    same = api.browse_versions(history.policy, "docs/home", "keep/same.txt", agent_config=None)
    assert len(same.versions) == 1 and same.versions[0].points == POINTS
    gone = api.browse_versions(history.policy, "docs/home", "gone.txt", agent_config=None)
    assert [v.last.id for v in gone.versions] == [history.points[10]]


def test_diff_matches_the_change_set(history: History, capsysbinary: Capture) -> None:
    doc = json.loads(
        cli(capsysbinary, history.policy, "diff", "docs/home", history.points[10], history.points[11], "--json")[0]
    )
    assert doc["format_version"] == "1.0"
    root = str(history.data.resolve())
    assert doc["added"] == [f"{root}/new", f"{root}/new/x.txt"]
    assert doc["removed"] == [f"{root}/gone.txt"]
    assert doc["modified"] == [{"path": f"{root}/m.txt", "what": ["content"]}]
    same = api.browse_diff(history.policy, "docs/home", history.points[12], history.points[13], agent_config=None)
    assert not (same.added or same.removed or same.modified)
    text = cli(capsysbinary, history.policy, "diff", "docs/home", history.points[3], history.points[4])[0]
    assert text.strip() == f"M {root}/a.txt  (content)"


def test_find_says_which_points_hold_a_path(history: History, capsysbinary: Capture) -> None:
    doc = json.loads(cli(capsysbinary, history.policy, "find", "docs", "*.txt", "--json")[0])
    assert doc["format_version"] == "1.0" and doc["points_searched"] == POINTS
    by_path = {m["path"].rsplit("/", 1)[1]: m for m in doc["matches"]}
    assert set(by_path) == {"a.txt", "same.txt", "m.txt", "gone.txt", "x.txt", "hello.txt", "report.txt"}
    assert by_path["gone.txt"]["points"] == history.points[:11]
    assert by_path["x.txt"]["first_point"]["id"] == history.points[11]
    # a path pattern, and a window of points
    window = api.browse_find(history.policy, "docs/home", "new/*", since=None, until=None, agent_config=None)
    assert [m.path for _, m in window.matches] == [b"new/x.txt"]
    _, err = cli(capsysbinary, history.policy, "find", "docs", "*.nothing", expect=1)
    assert "nothing matches" in err


def test_cat_is_byte_exact_at_any_time(history: History, capsysbinary: Capture) -> None:
    from protectctl.cli.main import main

    capsysbinary.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["-C", str(history.policy), "cat", "docs/home", "big.bin"])
    assert ended.value.code == 0 and capsysbinary.readouterr().out == BIG
    for i in (0, 5, 19):
        got = cli(capsysbinary, history.policy, "cat", "docs/home", "a.txt", "--to-time", history.points[i])[0]
        assert got.encode() == history.a_texts[i]
    sparse = bytearray()
    api.browse_cat(history.policy, "docs/home", "sparse.img", "latest", sparse.extend, agent_config=None)
    assert len(sparse) == (8 << 20) + 4 and sparse[:4] == b"head" and sparse[-4:] == b"tail"
    assert not any(sparse[4:-4])


def test_random_reads_fetch_the_right_bytes(history: History, capsysbinary: Capture) -> None:
    (source,) = api.browse_sources(history.policy, "docs/home", agent_config=None)
    from protectctl.browse.ops import locate

    with source.open_repository() as repo:
        points = repo.scan_points("docs/home").points
        trees = PointTrees(repo)
        node = locate(trees, points[-1], (b"big.bin",), None)
        loads: list[bytes] = []

        def load(blob_id: object) -> bytes:
            loads.append(bytes(blob_id))  # type: ignore[arg-type]
            return repo.load_blob(blob_id)  # type: ignore[arg-type]

        content = FileContent(repo, node)
        assert len(node.chunks) >= 2
        for offset, size in ((0, 10), (1 << 20, 300_000), (len(BIG) - 5, 100), (3 << 20, 1 << 20), (7, 0)):
            loads.clear()
            assert content.read(offset, size, load) == BIG[offset : offset + size]
            assert len(loads) <= 2  # only the chunks that cover the range
            assert len(loads) == {0: 0, 10: 1}.get(size, len(loads))
        sparse = FileContent(repo, locate(trees, points[-1], (b"sparse.img",), None))
        assert sparse.read((8 << 20) - 2, 6) == b"\0\0tail"
        assert sparse.read(1000, 10) == bytes(10)


def test_bad_input_is_one_clear_line(history: History, capsysbinary: Capture) -> None:
    for args, words in (
        (("ls", "docs/home", "no/such"), "is not in the point"),
        (("ls", "docs/nobody"), "no source matches"),
        (("ls", "docs/home/x"), "is not a source"),
        (("points", "list", "a/b/c"), "is not a source"),
        (("restore", "a/b/c", "--to-time", "latest"), "is not a source"),
        (("ls", "docs/home", "--to-time", "yesterday-ish"), "cannot read time"),
        (("ls", "docs/home", "--to-time", "2001-01-01"), "no recovery point"),
        (("cat", "docs/home", "keep"), "not a file"),
        (("versions", "docs/home", "../etc/passwd"), "leaves the recovery point"),
        (("find", "docs", ""), "empty"),
    ):
        _, err = cli(capsysbinary, history.policy, *args, expect=1)
        assert words in err, (args, err)
        assert len(err.strip().splitlines()) <= 2, err
    proc = run_cli(history.policy, "ls", "docs/home", "no/such", expect=1)  # the real console script too
    assert proc.stderr.startswith("Error: ") and "is not in the point" in proc.stderr


def test_restore_takes_absolute_paths_as_protected(history: History, tmp_path: Path, capsysbinary: Capture) -> None:
    absolute = str(history.data.resolve() / "keep" / "same.txt")
    cli(
        capsysbinary,
        history.policy,
        "restore",
        "docs/home",
        "--to-time",
        "latest",
        "--path",
        absolute,
        "--target",
        str(tmp_path / "t"),
    )
    assert (tmp_path / "t" / "keep" / "same.txt").read_bytes() == b"never changes\n"


def test_a_removed_group_stays_reachable(history: History, tmp_path: Path, capsysbinary: Capture) -> None:
    policy = tmp_path / "qs"
    shutil.copytree(history.policy, policy, symlinks=True)
    text = (policy / "protect.yaml").read_text()
    group = text.index("kind: ProtectionGroup")
    (policy / "protect.yaml").write_text(text[: text.rindex("---", 0, group)])
    listed, _ = cli(capsysbinary, policy, "points", "list")
    assert "docs/home" not in listed
    listed, _ = cli(capsysbinary, policy, "points", "list", "--all")
    assert listed.count("docs/home") >= POINTS and "docs/home: no longer in the policy" in listed
    doc = json.loads(cli(capsysbinary, policy, "points", "list", "--all", "--json")[0])
    assert doc["removed_sources"] == ["docs/home"] and not any(p["in_policy"] for p in doc["points"])
    assert len(json.loads(cli(capsysbinary, policy, "points", "list", "docs/home", "--json")[0])["points"]) == POINTS
    assert "keep/" in cli(capsysbinary, policy, "ls", "docs/home")[0].split()
    _, err = cli(capsysbinary, policy, "restore", "docs/home", "--to-time", "latest", expect=1)
    assert "no longer in the policy" in err and str(history.data.resolve()) in err
    cli(capsysbinary, policy, "restore", "docs/home", "--to-time", history.times[10], "--target", str(tmp_path / "t"))
    assert (tmp_path / "t" / "gone.txt").read_bytes() == b"will go\n"
    _, err = cli(capsysbinary, policy, "ls", "nobody/home", expect=1)
    assert "no source matches" in err


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != ".protectctl-restore"
    }


def test_restore_delete_says_then_removes_only_inside_the_target(
    history: History, tmp_path: Path, capsysbinary: Capture
) -> None:
    target, outside = tmp_path / "t", tmp_path / "outside.txt"
    outside.write_bytes(b"not the restore's")
    latest = ("restore", "docs/home", "--to-time", "latest", "--target", str(target))
    cli(capsysbinary, history.policy, *latest)
    (target / "extra.txt").write_bytes(b"x")
    (target / "keep" / "deeper").mkdir()
    (target / "keep" / "deeper" / "y").write_bytes(b"y")
    _, err = cli(capsysbinary, history.policy, *latest, expect=1)
    assert "is not empty" in err and "--overwrite" in err
    out, _ = cli(capsysbinary, history.policy, *latest, "--overwrite", "--delete", "--dry-run")
    assert "would delete: extra.txt" in out and "would delete: keep/deeper" in out and "keep/deeper/y" not in out
    assert (target / "extra.txt").exists()
    doc = json.loads(cli(capsysbinary, history.policy, *latest, "--overwrite", "--delete", "--json")[0])
    assert doc["details"]["deleted"] == ["extra.txt", "keep/deeper"]
    assert _tree(target) == _tree(history.data) and outside.read_bytes() == b"not the restore's"
    # back to point 10: what came later goes, what was there comes back
    cli(
        capsysbinary,
        history.policy,
        "restore",
        "docs/home",
        "--to-time",
        history.times[10],
        "--target",
        str(target),
        "--overwrite",
        "--delete",
    )
    assert not (target / "new").exists() and (target / "gone.txt").read_bytes() == b"will go\n"
    assert (target / "m.txt").read_bytes() == b"before\n"
    _, err = cli(capsysbinary, history.policy, *latest, "--delete", expect=1)
    assert "needs --overwrite" in err


def test_an_unfinished_restore_resumes(history: History, tmp_path: Path, capsysbinary: Capture) -> None:
    target = tmp_path / "t"
    latest = ("restore", "docs/home", "--to-time", "latest", "--target", str(target))
    _, err = cli(capsysbinary, history.policy, *latest, "--resume", expect=1)
    assert "no unfinished restore" in err
    cli(capsysbinary, history.policy, *latest)
    assert not (target / ".protectctl-restore").exists()
    # as a restore interrupted part-way leaves it: its marker, files missing, one half written
    from protectctl.restore.progress_marker import write_marker

    with api.browse_sources(history.policy, "docs/home", agent_config=None)[0].open_repository() as repo:
        tree = repo.scan_points("docs/home").points[-1].tree
    assert tree is not None
    write_marker(target, tree, [])
    (target / "a.txt").unlink()
    (target / "big.bin").write_bytes(BIG[:1000])
    doc = json.loads(cli(capsysbinary, history.policy, *latest, "--json")[0])  # a plain rerun continues
    assert any("resumed" in n for n in doc["notes"])
    assert _tree(target) == _tree(history.data) and not (target / ".protectctl-restore").exists()
    write_marker(target, tree, [])
    (target / "m.txt").unlink()
    out, _ = cli(capsysbinary, history.policy, *latest, "--resume")
    assert "already restored were kept" in out and (target / "m.txt").read_bytes() == b"after!\n"


def test_an_interrupted_restore_says_so_and_resumes(history: History, tmp_path: Path, capsysbinary: Capture) -> None:
    """Ctrl-C in the middle of a real restore (stopped at its 3rd verified file: deterministic)."""
    target, announce = tmp_path / "t", tmp_path / "announce"
    env = cli_env({"PROTECTCTL_CRASH_POINT": "restore-file#3", "PROTECTCTL_CRASH_ANNOUNCE": str(announce)})
    proc = subprocess.Popen(
        cli_argv(history.policy, "restore", "docs/home", "--to-time", "latest", "--target", str(target)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: proc.poll() is not None or announce.exists() and announce.read_text().endswith("\n"),
        "the restore reaches its 3rd file",
    )
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "Interrupted: the restore of docs/home stopped part-way" in err and "--resume" in err
    assert (target / ".protectctl-restore").exists()  # what it wrote is recorded as unfinished
    out, _ = cli(
        capsysbinary, history.policy, "restore", "docs/home", "--to-time", "latest", "--target", str(target), "--resume"
    )
    assert "already restored were kept" in out
    assert _tree(target) == _tree(history.data) and not (target / ".protectctl-restore").exists()
