"""File names are bytes: names, symlink targets and xattr names that are not UTF-8 are backed
up, journaled, listed and restored byte for byte; crafted trees fail entry by entry; holes
cost nothing to restore. Real files, real repositories, the real CLI."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protectctl.agent.jobs import restore, run_backup
from protectctl.agent.journal import Journal
from protectctl.engine.ids import BlobId
from protectctl.engine.points import Point, PointStats, new_point_id
from protectctl.engine.repository import BlobKind, Repository
from protectctl.engine.tree import HashScheme, Node, NodeType, Tree, extents_hash
from protectctl.errors import RestoreError
from protectctl.provider import journal_path
from tests.conftest import copy_example, run_cli
from tests.integration.test_filesystem_backup import PASS, T0, Clock, make_job

# Files are written right before each sync: trust them at the next one (agent/journal.py).
pytestmark = pytest.mark.usefixtures("no_racy_slack")

DIR = b"d\xff"
FILE = b"f\xfe"
LATIN1 = b"caf\xe9"
UTF8 = "café".encode()
LINK = b"l\xfd"
TARGET = b"t\xfc/../\x80x"
XATTR = b"user.\xfa\xff"
XVALUE = b"v\xff\x00"


def populate(root: Path) -> None:
    """A tree whose names, link target and xattr names are not UTF-8 (plus look-alikes that are)."""
    base = os.fsencode(root)
    os.mkdir(base + b"/" + DIR)
    with open(base + b"/" + DIR + b"/" + FILE, "wb") as handle:
        handle.write(b"odd name\n" * 100)
    with open(base + b"/" + LATIN1, "wb") as handle:
        handle.write(b"latin-1 spelling")
    with open(base + b"/" + UTF8, "wb") as handle:
        handle.write(b"utf-8 spelling")
    os.symlink(TARGET, base + b"/" + LINK)
    try:
        os.setxattr(base + b"/" + DIR + b"/" + FILE, XATTR, XVALUE)
        os.setxattr(base + b"/" + DIR, XATTR, b"on the dir")
    except OSError as err:
        pytest.skip(f"no user xattrs here: {err}")


def snapshot(root: bytes) -> dict[bytes, tuple[object, ...]]:
    """Every entry below `root` by raw relative path: type, mode, mtime, content or target, xattrs."""
    out: dict[bytes, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            xattrs = sorted(
                (os.fsencode(k), os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
            )
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, xattrs)
            else:
                with open(path, "rb") as handle:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, handle.read(), xattrs)
    return out


def test_names_that_are_not_utf8_back_up_journal_and_restore_byte_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    job = make_job(tmp_path, src)
    clock = Clock()
    first = run_backup(job, "sync", now=clock)
    assert first.ok and first.errors == () and first.files == 3

    # Journaled under the raw names: the next sync reuses every entry and reads nothing.
    with Repository.open(job.storage, PASS) as repo:
        journal = Journal(journal_path(job.state_dir, job.source, repo.id), repo_id=repo.id)
    assert set(journal.directory(DIR)) == {FILE}
    assert set(journal.directory(b"")) == {LATIN1, UTF8}
    assert journal.directory_tree(DIR) is not None
    journal.close()
    clock.tick(hours=1)
    again = run_backup(job, "sync", now=clock)
    assert again.ok and again.bytes_read == 0 and again.chunks_new == 0

    target = tmp_path / "restored"
    result = restore(job, "latest", target=target)
    assert result.files == 3 and result.verified == 3
    expected = snapshot(os.fsencode(src))
    assert snapshot(os.fsencode(target)) == expected
    assert sorted(os.listdir(os.fsencode(target))) == sorted([DIR, LATIN1, UTF8, LINK])
    assert os.readlink(os.fsencode(target) + b"/" + LINK) == TARGET
    assert os.getxattr(os.fsencode(target / os.fsdecode(DIR) / os.fsdecode(FILE)), XATTR) == XVALUE

    # --path with such a name: raw (as a shell passes it) or as listings print it.
    for given in (os.fsdecode(DIR + b"/" + FILE), "d\\xff/f\\xfe"):
        one = tmp_path / f"one-{len(given)}"
        assert restore(job, "latest", target=one, subpaths=[given]).files == 1
        assert os.listdir(os.fsencode(one) + b"/" + DIR) == [FILE]


def test_cli_syncs_lists_and_restores_names_that_are_not_utf8(tmp_path: Path) -> None:
    site = copy_example("quickstart", tmp_path / "quickstart")
    data = site / "data"
    data.mkdir(exist_ok=True)
    populate(data)
    run_cli(site, "apply", "--auto-approve")
    run_cli(site, "run", "sync", "docs")
    run_cli(site, "run", "sync", "docs")
    listed = json.loads(run_cli(site, "points", "list", "docs", "--json").stdout)
    assert len(listed["points"]) == 2 and all(p["complete"] for p in listed["points"])
    assert "docs/home" in run_cli(site, "points", "list", "docs").stdout
    whole = tmp_path / "whole"
    run_cli(site, "restore", "docs/home", "--to-time", "latest", "--target", str(whole))
    assert snapshot(os.fsencode(whole)) == snapshot(os.fsencode(data))
    part = tmp_path / "part"
    run_cli(
        site,
        "restore",
        "docs/home",
        "--to-time",
        "latest",
        "--target",
        str(part),
        "--path",
        os.fsdecode(DIR + b"/" + FILE),
    )
    assert os.listdir(os.fsencode(part)) == [DIR]
    missing = run_cli(
        site,
        "restore",
        "docs/home",
        "--to-time",
        "latest",
        "--target",
        str(tmp_path / "none"),
        "--path",
        os.fsdecode(b"no\xffthere"),
        expect=1,
    )
    assert "no\\xffthere" in missing.stderr  # shown escaped, never a crash


def _file(repo: Repository, writer: object, name: bytes, data: bytes) -> Node:
    blob, _ = writer.add(BlobKind.DATA, data)  # type: ignore[attr-defined]
    hasher = repo.content_hasher()
    hasher.update(data)
    return Node(
        name, NodeType.FILE, 0o644, 0, 0, None, None, 0, 0, 0, len(data), chunks=(blob,), content_hash=hasher.digest()
    )


def _publish(repo: Repository, source: str, tree: BlobId) -> None:
    repo.save_point(Point(new_point_id(), source, T0, "full", None, tree, PointStats(), True))


def test_crafted_names_fail_entry_by_entry_and_the_rest_restores(tmp_path: Path) -> None:
    job = make_job(tmp_path, tmp_path)
    with Repository.open(job.storage, PASS) as repo:
        with repo.writer() as writer:
            good = _file(repo, writer, b"good\xff", b"kept")
            evil = [_file(repo, writer, name, b"pwned") for name in (b"a/b", b"..", b"x\x00y", b"/abs")]
            # Format 1 text no bytes can spell (a lone surrogate), written as a tree blob as is.
            stored = {
                "v": 1,
                "nodes": [
                    {
                        "name": "ok",
                        "type": "file",
                        "mode": 420,
                        "uid": 0,
                        "gid": 0,
                        "mtime_ns": 0,
                        "atime_ns": 0,
                        "ctime_ns": 0,
                        "size": 4,
                        "chunks": [good.chunks[0].hex()],
                    },
                    {
                        "name": "\ud800bad",
                        "type": "file",
                        "mode": 420,
                        "uid": 0,
                        "gid": 0,
                        "mtime_ns": 0,
                        "atime_ns": 0,
                        "ctime_ns": 0,
                        "size": 4,
                        "chunks": [good.chunks[0].hex()],
                    },
                ],
            }
            inner, _ = writer.add(BlobKind.TREE, json.dumps(stored).encode())
            sub = Node(b"sub", NodeType.DIR, 0o755, 0, 0, None, None, 0, 0, 0, 0, subtree=inner)
            root = repo.save_tree(writer, Tree((good, sub, *evil)))
        _publish(repo, job.source, root)
    target = tmp_path / "deep" / "target"
    with pytest.raises(RestoreError) as caught:
        restore(job, "latest", target=target)
    message = str(caught.value)
    assert "5 entries could not be restored" in message
    assert "sub/\\xed\\xa0\\x80bad: refusing to restore this entry" in message
    # the marker of the unfinished restore stays, for a rerun with --resume (restore/progress_marker.py)
    assert sorted(os.listdir(os.fsencode(target))) == [b".protectctl-restore", b"good\xff", b"sub"]
    assert os.listdir(os.fsencode(target / "sub")) == [b"ok"]
    assert (target / "sub" / "ok").read_bytes() == b"kept"
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["target"]
    assert not Path("/abs").exists()


@contextlib.contextmanager
def _roomy_directory(tmp_path: Path, size: int) -> Iterator[Path]:
    """A directory on a filesystem that takes a file of `size` bytes (ext4 stops at 16 TiB; tmpfs
    and xfs do not)."""
    for parent in (tmp_path, Path("/dev/shm")):
        if not parent.is_dir():
            continue
        directory = Path(tempfile.mkdtemp(dir=parent, prefix="pib-"))
        probe = directory / "probe"
        try:
            with probe.open("wb") as handle:
                handle.truncate(size)
        except OSError as err:
            shutil.rmtree(directory)
            if err.errno != errno.EFBIG:
                raise
            continue
        probe.unlink()
        try:
            yield directory
        finally:
            shutil.rmtree(directory)
        return
    pytest.skip(f"no filesystem here takes a {size}-byte file")


PIB = 1 << 50


@pytest.mark.timeout(120)  # a safety net only: hashing a PiB of zeros would take days
def test_a_pebibyte_of_holes_restores_as_a_sparse_file_at_once(tmp_path: Path) -> None:
    job = make_job(tmp_path, tmp_path)
    holes = ((0, PIB),)
    with Repository.open(job.storage, PASS) as repo:
        digest = extents_hash(repo.content_hasher(), PIB, holes, repo.content_hasher().digest())
        sparse = Node(
            b"huge",
            NodeType.FILE,
            0o600,
            0,
            0,
            None,
            None,
            0,
            0,
            0,
            PIB,
            holes=holes,
            content_hash=digest,
            hash_scheme=HashScheme.EXTENTS,
        )
        # The same file as an older point stored it: a hash of the zeros (here not even right).
        legacy = Node(
            b"legacy", NodeType.FILE, 0o600, 0, 0, None, None, 0, 0, 0, PIB, holes=holes, content_hash=b"\x00" * 32
        )
        with repo.writer() as writer:
            root = repo.save_tree(writer, Tree((sparse, legacy)))
        _publish(repo, job.source, root)
    with _roomy_directory(tmp_path, PIB) as directory:
        target = directory / "target"
        result = restore(job, "latest", target=target)
        assert result.files == 2 and result.verified == 1  # the EXTENTS hash was checked
        assert any("legacy: not checked against its whole-file hash" in note for note in result.notes)
        for name in ("huge", "legacy"):
            st = (target / name).stat()
            assert st.st_size == PIB and st.st_blocks == 0


def test_sparse_files_are_verified_from_their_extents(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "disk.img").open("wb") as handle:
        handle.seek(64 << 20)
        handle.write(b"middle")
        handle.truncate(128 << 20)
    job = make_job(tmp_path, src)
    assert run_backup(job, "sync", now=Clock()).ok
    with Repository.open(job.storage, PASS) as repo:
        point = repo.list_points(job.source)[-1]
        assert point.tree is not None
        (node,) = repo.load_tree(point.tree).nodes
    if not node.holes:
        pytest.skip("this filesystem reports no holes")
    assert node.hash_scheme is HashScheme.EXTENTS
    result = restore(job, "latest", target=tmp_path / "t")
    assert result.verified == 1
    assert (tmp_path / "t" / "disk.img").read_bytes() == (src / "disk.img").read_bytes()


def test_patterns_see_an_undecodable_byte_as_one_character(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    populate(src)
    job = make_job(tmp_path, src, spec={"path": str(src), "exclude": ["/d?/f?", "caf?"]})
    assert run_backup(job, "sync", now=Clock()).ok
    restore(job, "latest", target=tmp_path / "t")
    assert sorted(os.listdir(os.fsencode(tmp_path / "t"))) == [DIR, LINK]
    assert os.listdir(os.fsencode(tmp_path / "t") + b"/" + DIR) == []


def test_errors_of_older_points_list_printably(tmp_path: Path) -> None:
    job = make_job(tmp_path, tmp_path)
    with Repository.open(job.storage, PASS) as repo:
        with repo.writer() as writer:
            root = repo.save_tree(writer, Tree(()))
        # What an earlier release recorded for an unreadable file named b"x\xff".
        repo.save_point(
            Point(
                new_point_id(),
                job.source,
                T0,
                "sync",
                None,
                root,
                PointStats(),
                False,
                errors=("x\udcff: Permission denied",),
            )
        )
        (point,) = repo.list_points(job.source)
    assert point.errors == ("x\\xff: Permission denied",)
    json.dumps(list(point.errors), ensure_ascii=False).encode("utf-8")  # printable: no lone surrogate
