"""A writer SIGKILLed at any step leaves a repository that checks clean and takes new writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protectctl.engine.repository import Repository
from protectctl.engine.storage.base import ObjectKind
from tests.unit.engine.conftest import PASSPHRASE, backup, make_repo, random_files, restore

CHILD = Path(__file__).with_name("kill_writer.py")
ROOT = Path(__file__).resolve().parents[3]


def _run_until(repo_path: Path, marker: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(repo_path), PASSPHRASE.decode()],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout is not None
    seen = []
    for line in child.stdout:
        seen.append(line.strip())
        if line.strip() == marker:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(30)
    assert marker in seen, f"child ended before {marker!r}: {seen[-3:]}"


@pytest.mark.parametrize(
    "marker",
    [
        "add 0 3",  # sealing, nothing on storage yet
        "add 0 30",  # several packs uploaded, no index
        "committed 0",  # index written, point not yet
        "add 1 25",  # one point published, the next half written
        "saved 1",  # between sessions
    ],
)
def test_sigkill_leaves_a_consistent_repository(tmp_path: Path, marker: str) -> None:
    repo = make_repo(tmp_path / "repo")
    before = backup(repo, random_files(2, 30_000) | {"text": b"abc" * 20_000})
    _run_until(tmp_path / "repo", marker)

    reopened = Repository.open(repo.storage, PASSPHRASE)
    report = reopened.check(read_data=True)
    assert report.ok, report.errors
    if not marker.startswith("saved"):  # inside a session the child held a lock; now stale
        assert list(reopened.storage.list(ObjectKind.LOCKS))

    files = random_files(2, 40_000)
    after = backup(reopened, files)  # takes the dead child's lock over
    assert restore(reopened, after) == files
    reopened.gc()  # crash garbage of the child goes
    final = reopened.check(read_data=True)
    assert final.ok and final.warnings == (), (final.errors, final.warnings)
    assert restore(reopened, before)["text"] == b"abc" * 20_000
    for point in reopened.list_points():
        assert point.tree is not None
        reopened.load_tree(point.tree)
    assert list(reopened.storage.list(ObjectKind.LOCKS)) == []
