"""Lease locks: sharing, exclusion, takeover of dead or expired holders, refresh, loss."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from protectctl.engine.locks import LeaseLock, LockRecord, decode_lock, encode_lock, process_start
from protectctl.engine.repository import BlobKind, Point, PointStats, Repository, new_point_id
from protectctl.engine.storage.base import ObjectKind
from protectctl.errors import LockedError, RepositoryError
from tests.conftest import wait_until
from tests.unit.engine.conftest import PASSPHRASE


def _plant(repo: Repository, **changes: object) -> LockRecord:
    now = time.time()
    record = LockRecord(
        name="ab" * 16,
        host=socket.gethostname(),
        pid=1,
        pid_start=process_start(1),
        command="backup docs",
        exclusive=True,
        created=now,
        refreshed=now,
        lease_s=300.0,
    )
    record = replace(record, **changes)  # type: ignore[arg-type]
    repo.storage.put(ObjectKind.LOCKS, record.name, encode_lock(repo.sealer, record))
    return record


def test_shared_locks_coexist(repo: Repository) -> None:
    other = Repository.open(repo.storage, PASSPHRASE)
    with repo.lock(exclusive=False, command="sync a"), other.lock(exclusive=False, command="sync b"):
        assert len(list(repo.storage.list(ObjectKind.LOCKS))) == 2
    assert list(repo.storage.list(ObjectKind.LOCKS)) == []


def test_exclusive_excludes_and_names_the_holder(repo: Repository) -> None:
    other = Repository.open(repo.storage, PASSPHRASE)
    with (
        repo.lock(exclusive=False, command="sync docs/home"),
        pytest.raises(LockedError, match="sync docs/home"),
        other.lock(exclusive=True, command="gc"),
    ):
        pass
    with (
        repo.lock(exclusive=True, command="check --repair"),
        pytest.raises(LockedError, match="check --repair"),
        other.lock(exclusive=False, command="sync"),
    ):
        pass
    assert list(repo.storage.list(ObjectKind.LOCKS)) == []  # the loser cleaned up


def test_a_writer_holds_a_shared_lock_until_its_point_is_saved(repo: Repository) -> None:
    other = Repository.open(repo.storage, PASSPHRASE)
    with repo.writer() as writer:
        writer.add(BlobKind.DATA, b"x")
    with pytest.raises(LockedError, match="writer"), other.lock(exclusive=True, command="gc"):
        pass
    repo.save_point(Point(new_point_id(), "a/b", _now(), "sync", None, None, PointStats(), True))
    with other.lock(exclusive=True, command="gc"):
        pass


def test_dead_holder_is_taken_over(repo: Repository) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    planted = _plant(repo, pid=child.pid, pid_start=None)
    with repo.lock(exclusive=True, command="gc"):
        assert not repo.storage.exists(ObjectKind.LOCKS, planted.name)


def test_reused_pid_is_taken_over(repo: Repository) -> None:
    planted = _plant(repo, pid=1, pid_start=(process_start(1) or 0) + 12345)
    with repo.lock(exclusive=True, command="gc"):
        assert not repo.storage.exists(ObjectKind.LOCKS, planted.name)


def test_expired_lease_on_another_host_is_taken_over(repo: Repository) -> None:
    planted = _plant(repo, host="elsewhere", refreshed=time.time() - 1000)
    with repo.lock(exclusive=False, command="sync"):
        assert not repo.storage.exists(ObjectKind.LOCKS, planted.name)


def test_live_locks_are_never_broken(repo: Repository) -> None:
    _plant(repo, host="elsewhere")
    with pytest.raises(LockedError, match="elsewhere"), repo.lock(exclusive=False, command="sync"):
        pass
    repo.storage.delete(ObjectKind.LOCKS, "ab" * 16)
    _plant(repo)  # pid 1 on this host: alive
    with pytest.raises(LockedError, match="pid 1"), repo.lock(exclusive=False, command="sync"):
        pass


def test_held_lock_is_refreshed(repo: Repository) -> None:
    repo.lock_lease_s = 0.2
    with repo.lock(exclusive=True, command="gc"):
        (info,) = repo.storage.list(ObjectKind.LOCKS)

        def refreshed() -> bool:
            record = decode_lock(repo.sealer, info.name, repo.storage.get(ObjectKind.LOCKS, info.name))
            return record.refreshed > record.created

        wait_until(refreshed, "the background thread refreshes the lock")  # every lease/4, however loaded


def test_a_lost_lock_stops_the_point(repo: Repository) -> None:
    repo.lock_lease_s = 0.2
    with repo.lock(exclusive=False, command="sync"):
        (info,) = repo.storage.list(ObjectKind.LOCKS)
        repo.storage.delete(ObjectKind.LOCKS, info.name)  # as a gc that judged it expired would
        wait_until(
            lambda: any(lease.lost for lease in repo._held + [repo._implicit] if lease),
            "the refresh thread notices the lock is gone",
        )
        with pytest.raises(RepositoryError, match="taken over"):
            repo.save_point(Point(new_point_id(), "a/b", _now(), "sync", None, None, PointStats(), True))


def test_lease_lock_release_is_idempotent_about_a_vanished_object(repo: Repository) -> None:
    lock = LeaseLock(repo.storage, repo.sealer, exclusive=False, command="x", lease_s=60)
    lock.acquire()
    repo.storage.delete(ObjectKind.LOCKS, lock.name)
    lock.release()


def _now() -> datetime:
    return datetime.now(UTC)
