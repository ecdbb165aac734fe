"""The s3 state backend: the state as one object, its lock as another (like Terraform's `use_lockfile`).

The lock object `<key>.lock` is created with a conditional write (`If-None-Match: *`): of two
runners, exactly one creates it. It names its holder and carries `refreshed`, rewritten every
`lease_s / 4` by the holder with `If-Match` on its own ETag. A waiting runner takes the lock
over only when its holder is dead (same host, process gone) or silent past its lease, and
only by a conditional overwrite (`If-Match` on the ETag it judged stale): two takers cannot
both win, and a live holder is never broken (unless `state unlock --force`). A versioned
bucket keeps every earlier state (recommended; docs/object-storage.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from protectctl.engine.locks import _pid_alive, process_start
from protectctl.errors import StateError, StateLockedError
from protectctl.state.model import State

# Two minutes: a runner killed mid-apply blocks the next one that long at most; a refresh
# every 30 s survives a few lost requests.
DEFAULT_LEASE_S = 120.0


class S3StateBackend:
    def __init__(self, client: Any, bucket: str, key: str, *, where: str, lease_s: float = DEFAULT_LEASE_S) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.lock_key = key + ".lock"
        self.lease_s = lease_s
        self._where = where

    def describe(self) -> str:
        return f"s3:{self._where}"

    # --- state ------------------------------------------------------------------------

    def read(self) -> State:
        raw = self._get(self.key)
        if raw is None:
            return State()
        try:
            return State.model_validate_json(raw[0])
        except ValidationError as err:
            raise StateError(
                f"state object {self.describe()} is damaged or not a protectctl state ({err.error_count()} problem(s))",
                hint="restore an earlier version of it (a versioned bucket keeps them)",
            ) from None

    def exists(self) -> bool:
        return self._get(self.key) is not None

    def write(self, state: State) -> None:
        data = state.model_dump_json(indent=2).encode() + b"\n"
        self._request(
            "writing the state",
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=self.key, Body=data, ContentType="application/json"
            ),
        )

    # --- lock -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout_s: float) -> Iterator[None]:
        holder = _Holder(self, command)
        holder.acquire(timeout_s)
        try:
            yield
        finally:
            holder.release()

    def holder(self) -> str | None:
        found = self._get(self.lock_key)
        return _describe(_parse(found[0])) if found else None

    def unlock(self, force: bool = False) -> str:
        found = self._get(self.lock_key)
        if found is None:
            return "no lock"
        info = _parse(found[0])
        if not force and not _stale(info, self.lease_s):
            raise StateLockedError(
                f"the lock is held by a live process: {_describe(info)}",
                hint="stop that process first, or pass --force to break the lock",
            )
        self._request("removing the lock", lambda: self._client.delete_object(Bucket=self.bucket, Key=self.lock_key))
        return _describe(info)

    # --- requests ---------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            reply = self._request(
                f"reading {key}", lambda: self._client.get_object(Bucket=self.bucket, Key=key), passthrough=True
            )
        except ClientError as err:
            if _code(err) in ("NoSuchKey", "404"):
                return None
            raise self._error(f"reading {key}", err) from None
        body = reply["Body"]
        try:
            return body.read(), str(reply.get("ETag", ""))
        finally:
            body.close()

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> str | None:
        """The new ETag, or None when the condition did not hold."""
        from botocore.exceptions import ClientError

        try:
            reply = self._request(
                "writing the lock",
                lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition),
                passthrough=True,
            )
        except ClientError as err:
            if _code(err) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            raise self._error("writing the lock", err) from None
        return str(reply.get("ETag", ""))

    def _request(self, what: str, call: Any, *, passthrough: bool = False) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as err:
            if passthrough:
                raise
            raise self._error(what, err) from None
        except BotoCoreError as err:
            raise StateError(
                f"state backend {self.describe()}: {what}: {err}",
                hint="the state lives only there: make the endpoint reachable (nothing was "
                "read from or written to a local copy)",
            ) from None

    def _error(self, what: str, err: Any) -> StateError:
        return StateError(
            f"state backend {self.describe()}: {what}: {_code(err)}: "
            f"{err.response.get('Error', {}).get('Message', '')}".rstrip(": "),
            hint="check the bucket and the Storage's credentials",
        )


class _Holder:
    """One holding of the lock: created or taken over, refreshed, released."""

    def __init__(self, backend: S3StateBackend, command: str) -> None:
        self.backend = backend
        pid = os.getpid()
        self.info = {
            "pid": pid,
            "pid_start": process_start(pid),
            "host": socket.gethostname(),
            "command": command,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "id": os.urandom(8).hex(),
            "lease_s": backend.lease_s,
            "refreshed": time.time(),
        }
        self.etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self.info["refreshed"] = time.time()
        return json.dumps(self.info).encode()

    def acquire(self, timeout_s: float) -> None:
        b = self.backend
        deadline = time.monotonic() + timeout_s
        while True:
            self.etag = b._conditional_put(b.lock_key, self._body(), IfNoneMatch="*")
            if self.etag is not None:
                break
            found = b._get(b.lock_key)
            if found is not None:
                other = _parse(found[0])
                if _stale(other, b.lease_s):
                    self.etag = b._conditional_put(b.lock_key, self._body(), IfMatch=found[1])
                    if self.etag is not None:
                        break
                    continue
                if time.monotonic() >= deadline:
                    raise StateLockedError(
                        f"the state is locked by {_describe(other)}",
                        hint="wait for it to finish, pass --lock-timeout 5m, or `protectctl state unlock` "
                        "if that process is gone (a dead holder's lock is taken over when its lease ends)",
                    )
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._refresh, name="state-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        b = self.backend
        while not self._stop.wait(max(b.lease_s / 4, 0.05)):
            with contextlib.suppress(StateError):
                etag = b._conditional_put(b.lock_key, self._body(), IfMatch=self.etag or "")
                if etag is None:
                    return  # taken over (we were silent past the lease): never write it back
                self.etag = etag

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        b = self.backend
        with contextlib.suppress(ClientError, StateError):
            b._request(
                "releasing the lock",
                lambda: b._client.delete_object(Bucket=b.bucket, Key=b.lock_key, IfMatch=self.etag or ""),
                passthrough=True,
            )


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", "")) or str(
        err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _stale(info: dict[str, Any], lease_s: float) -> bool:
    """The holder is gone (its process, on this host) or silent past its lease."""
    if not info:
        return True  # not a lock we can read: written by no protectctl
    if (
        info.get("host") == socket.gethostname()
        and isinstance(info.get("pid"), int)
        and not _pid_alive(info["pid"], info.get("pid_start"))
    ):
        return True
    lease = float(info.get("lease_s") or lease_s)
    return time.time() - float(info.get("refreshed") or 0) > lease


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "an unreadable lock object"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('time')})"
