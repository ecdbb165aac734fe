"""`S3Storage`: the storage Protocol on an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, SeaweedFS).

Layout under the bucket's `prefix`: `config/config`, `keys/<name>`, `index/<name>`,
`points/<name>`, `locks/<name>` and `data/<first two hex chars>/<name>`, as on a local disk,
so a repository copied between the two with any S3 tool stays valid. A PUT is atomic in S3
(a reader sees the old object or the whole new one), which is all the Protocol asks.

The client is botocore (what boto3 wraps): its "standard" retry mode retries transient errors (5xx,
throttling, dropped connections) with exponential backoff and jitter, a bounded number of
times; a permanent error (403, 404, a bad request) stops at once. Objects past
`MULTIPART_THRESHOLD` go up in parallel parts (s3transfer). Listing pages through
ListObjectsV2 1,000 keys at a time, yielding as it goes: memory stays flat at millions.

Object lock (`ObjectLock`): every object but a lease lock or an index is written with a retention
(COMPLIANCE or GOVERNANCE) until `now + retain_s`; the bucket is versioned, so a delete by
an agent's key only adds a delete marker and an overwrite only adds a version: the first
version of a name is the one the repository wrote (every name but a lock's is written
once), and reads, listings and existence checks go by it. `delete` removes every version of
a name and raises `ObjectLockedError` for one still under retention.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from protectctl.engine.storage.base import ObjectInfo, ObjectKind, ObjectLockedError, ObjectMissingError
from protectctl.errors import ProtectctlError, RepositoryError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Packs are 8 MiB (engine/writer.py): one PUT each. Bigger objects (a rare 64 MiB index of a
# huge repository) go in 16 MiB parts, 4 at a time.
MULTIPART_THRESHOLD = 32 << 20
MULTIPART_CHUNK = 16 << 20
# How many times a request is tried in all before a transient error is final. With botocore's
# backoff (random up to 2**attempt s, capped at 20 s) 6 attempts give up after ~30 s at most.
DEFAULT_MAX_ATTEMPTS = 6
# Concurrent pack uploads per writer (engine/writer.py asks `put_parallelism`): one 8 MiB PUT
# does not fill a link with ~10 ms of latency; four do (tests/bench/bench_s3.py).
PUT_PARALLELISM = 4
# Small objects read in a row (point manifests a job scans, index objects): this many GETs in
# flight (engine/prefetch.py); each costs ~5-40 ms on SeaweedFS whatever its size.
READ_PARALLELISM = 16
# Blob reads fetch this much of a pack in one ranged GET and serve the next blobs from it
# (engine/readahead.py): a request costs ~40 ms on a loaded SeaweedFS whatever its size.
READ_AHEAD_BYTES = 4 << 20

# Never locked, read at their latest version: lease locks are rewritten in place (refreshes),
# and gc replaces index objects (which `repair` can always rebuild from the packs' headers).
_UNLOCKED = (ObjectKind.LOCKS, ObjectKind.INDEX)
# (version id, size, is a delete marker, modified) by key; named here because inside S3Storage
# `list` is its method, not the builtin
_Versions = dict[str, list[tuple[str, int, bool, datetime]]]

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str = ""

    def __repr__(self) -> str:
        return f"S3Credentials({self.access_key_id[:4]}****)"


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """Retention set on every object written: `mode` is "compliance" or "governance"."""

    mode: str
    retain_s: int

    def until(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(UTC)) + timedelta(seconds=self.retain_s)


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint}" if self.endpoint else where


def make_client(
    location: S3Location,
    credentials: S3Credentials | None,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    connect_timeout_s: float = 5.0,
) -> Any:
    """A thread-safe botocore S3 client with bounded retries.

    botocore itself, not boto3: boto3's import (its resource layer, s3transfer) adds ~0.1-0.2 s
    to every agent run and nothing here uses it; multipart uploads use s3transfer directly.
    Imported here, not at module level: botocore costs ~0.3 s and only s3 storages need it."""
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError as err:
        raise ProtectctlError(
            "an s3 storage needs the S3 client libraries (boto3), which are not installed here",
            hint="pip install 'protectctl[s3]' (agents get them from apply when their host uses an s3 storage)",
        ) from err

    config = Config(
        region_name=location.region,
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=60,
        max_pool_connections=32,
        s3={"addressing_style": "path"} if location.endpoint else {},
        # checksums only when required: SeaweedFS and older Ceph reject the trailing CRC32 header
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"config": config}
    if location.endpoint:
        kwargs["endpoint_url"] = location.endpoint
    if credentials is not None:
        kwargs["aws_access_key_id"] = credentials.access_key_id
        kwargs["aws_secret_access_key"] = credentials.secret_access_key
    session = botocore.session.get_session()
    session.register_component("data_loader", _s3_loader(session.get_config_variable("data_path")))
    client = session.create_client("s3", **kwargs)
    if trace := os.environ.get(TRACE_ENV):
        _trace_requests(client, trace)
    return client


def _s3_loader(data_path: str | None) -> Any:
    """botocore's model loader, as botocore would make it (same search path: AWS_DATA_PATH,
    ~/.aws/models, its own data), minus two costs every agent run paid for nothing:

    - it listed every service botocore knows (~430 directories, ~2,600 stat calls) to check
      that "s3" is one; this one knows only s3;
    - it decoded the model files (1.3 MB of endpoints, 1.3 MB of the s3 model) into
      OrderedDicts, 2-2.5x slower than plain dicts, which keep order as well.

    Together ~60-90 ms of CPU per client (tests/unit/test_s3_client.py checks the client works)."""
    import gzip

    from botocore.loaders import Loader

    extensions = (".json", ".json.gz")

    class PlainJSONFiles:
        def exists(self, file_path: str) -> bool:
            return any(os.path.isfile(file_path + ext) for ext in extensions)

        def load_file(self, file_path: str) -> Any:
            for ext in extensions:
                path = file_path + ext
                if os.path.isfile(path):
                    with gzip.open(path, "rb") if ext.endswith(".gz") else open(path, "rb") as f:
                        return json.loads(f.read().decode("utf-8"))
            return None

    class S3Loader(Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> list[str]:
            return ["s3"]

    paths = [os.path.expanduser(os.path.expandvars(p)) for p in (data_path or "").split(os.pathsep) if p]
    return S3Loader(extra_search_paths=paths, file_loader=PlainJSONFiles())


# A file to append one JSON line per S3 request to (operation, HTTP method, status, bytes,
# milliseconds, thread, pid): how tests/bench/bench_s3.py counts a sync's round trips.
TRACE_ENV = "PROTECTCTL_S3_TRACE"


def _trace_requests(client: Any, path: str) -> None:
    lock = threading.Lock()

    def before(context: dict[str, Any], params: dict[str, Any], **_: Any) -> None:
        body: Any = params.get("body")
        sent = len(body) if isinstance(body, bytes | bytearray) else 0
        if hasattr(body, "seek") and hasattr(body, "tell"):
            here = body.tell()
            sent = body.seek(0, io.SEEK_END) - here
            body.seek(here)
        context["_trace"] = (time.perf_counter(), sent)

    def after(context: dict[str, Any], model: Any, http_response: Any, **_: Any) -> None:
        start, sent = context.get("_trace", (time.perf_counter(), 0))
        got = int(http_response.headers.get("content-length") or 0) if http_response is not None else 0
        line = {
            "op": model.name,
            "method": model.http.get("method", ""),
            "status": getattr(http_response, "status_code", 0),
            "sent": sent,
            "received": got,
            "ms": round((time.perf_counter() - start) * 1000, 1),
            "t": round(time.time(), 3),
            "thread": threading.get_ident(),
            "pid": os.getpid(),
        }
        with lock, open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    client.meta.events.register("before-call.s3", before)
    client.meta.events.register("after-call.s3", after)


class S3Storage:
    """Objects as keys under one prefix of one bucket."""

    put_parallelism = PUT_PARALLELISM
    read_parallelism = READ_PARALLELISM
    read_ahead_bytes = READ_AHEAD_BYTES

    def __init__(
        self,
        location: S3Location,
        credentials: S3Credentials | None = None,
        *,
        lock: ObjectLock | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        client: Any = None,
    ) -> None:
        self.location = location
        self.lock = lock
        self._prefix = (
            location.prefix if not location.prefix or location.prefix.endswith("/") else location.prefix + "/"
        )
        self._client = client if client is not None else make_client(location, credentials, max_attempts=max_attempts)
        self._attempts = max_attempts
        self._versions: dict[str, tuple[str, int]] = {}  # key -> (first version id, its size)
        self._versions_lock = threading.Lock()

    def describe(self) -> str:
        return f"s3:{self.location.describe()}"

    # --- the Protocol ---------------------------------------------------------------

    def put(self, kind: ObjectKind, name: str, data: bytes) -> None:
        key = self._key(kind, name)
        extra = self._lock_args(kind)
        if len(data) >= MULTIPART_THRESHOLD:
            self._put_multipart(key, data, extra)
            return
        self._call(
            "writing",
            kind,
            name,
            lambda: self._client.put_object(Bucket=self.location.bucket, Key=key, Body=bytes(data), **extra),
        )
        self._forget(key)

    def create(self, kind: ObjectKind, name: str, data: bytes) -> bool:
        """Store only if no object has the name (a conditional write, `If-None-Match: *`);
        False if one does. Two callers racing for one name: exactly one gets True."""
        key = self._key(kind, name)
        try:
            self._call(
                "creating",
                kind,
                name,
                lambda: self._client.put_object(
                    Bucket=self.location.bucket, Key=key, Body=bytes(data), IfNoneMatch="*", **self._lock_args(kind)
                ),
            )
        except _Conflict:
            return False
        return True

    def get(self, kind: ObjectKind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        key = self._key(kind, name)
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if self._versioned_read(kind):
            args["VersionId"] = self._first_version(kind, name, key)[0]
        if length == 0:
            self._call("reading", kind, name, lambda: self._client.head_object(**args))
            return b""
        if offset or length is not None:
            args["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            body: bytes = self._call("reading", kind, name, lambda: self._read(args))
        except _RangeError:
            body = b""
        if length is not None and len(body) != length:
            raise RepositoryError(
                f"{self.describe()}: reading {kind}/{name}: wanted {length} bytes, the object is shorter"
            )
        return body

    def list(self, kind: ObjectKind) -> Iterator[ObjectInfo]:
        if self._versioned_read(kind):
            for name, (_, size) in self._list_first_versions(kind).items():
                yield ObjectInfo(kind, name, size)
            return
        prefix = self._kind_prefix(kind)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
        )
        for page in self._pages(kind, pages):
            for item in page.get("Contents", ()):
                name = item["Key"].rsplit("/", 1)[-1]
                if _NAME.match(name):
                    yield ObjectInfo(kind, name, int(item["Size"]))

    def delete(self, kind: ObjectKind, name: str) -> None:
        key = self._key(kind, name)
        if not self._versioned_read(kind):
            if not self.exists(kind, name):
                raise ObjectMissingError(f"{self.describe()}: {kind}/{name} does not exist")
            self._call("deleting", kind, name, lambda: self._client.delete_object(Bucket=self.location.bucket, Key=key))
            return
        self._delete_versions(kind, name, key)

    def discard(self, kind: ObjectKind, name: str) -> None:
        """`delete` without the existence check: no error if the object is gone. One request
        instead of two (HEAD, DELETE) where a missing object is fine: a lease lock released."""
        if self._versioned_read(kind):
            with contextlib.suppress(ObjectMissingError):
                self.delete(kind, name)
            return
        key = self._key(kind, name)
        with contextlib.suppress(ObjectMissingError):
            self._call("deleting", kind, name, lambda: self._client.delete_object(Bucket=self.location.bucket, Key=key))

    def exists(self, kind: ObjectKind, name: str) -> bool:
        key = self._key(kind, name)
        if self._versioned_read(kind):
            try:
                self._first_version(kind, name, key)
            except ObjectMissingError:
                return False
            return True
        try:
            self._call("checking", kind, name, lambda: self._client.head_object(Bucket=self.location.bucket, Key=key))
        except ObjectMissingError:
            return False
        return True

    def check_bucket(self) -> None:
        """RepositoryError unless the bucket exists and, with `lock`, has object lock enabled."""
        bucket = self.location.bucket
        self._call("checking bucket", ObjectKind.CONFIG, "", lambda: self._client.head_bucket(Bucket=bucket))
        if self.lock is None:
            return
        try:
            reply = self._call(
                "checking object lock of",
                ObjectKind.CONFIG,
                "",
                lambda: self._client.get_object_lock_configuration(Bucket=bucket),
            )
        except RepositoryError:
            reply = {}
        enabled = (reply.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"
        if not enabled:
            raise RepositoryError(
                f"{self.describe()}: bucket {bucket!r} does not have object lock enabled",
                hint="object lock is set when a bucket is created: create one with it "
                "(docs/object-storage.md), or drop `objectLock` from the Storage",
            )

    # --- object lock ------------------------------------------------------------------

    def retained_until(self, kind: ObjectKind, name: str) -> datetime | None:
        """The retention date of the object's first version (None if it has none)."""
        key = self._key(kind, name)
        version, _ = self._first_version(kind, name, key)
        try:
            reply = self._call(
                "reading retention of",
                kind,
                name,
                lambda: self._client.get_object_retention(Bucket=self.location.bucket, Key=key, VersionId=version),
            )
        except ObjectMissingError:
            return None
        until = (reply.get("Retention") or {}).get("RetainUntilDate")
        return until if isinstance(until, datetime) else None

    def retain(self, kind: ObjectKind, name: str, until: datetime) -> None:
        """Extend the retention of the object's first version to `until` (never shortened)."""
        if self.lock is None:
            return
        mode = self.lock.mode.upper()
        key = self._key(kind, name)
        version, _ = self._first_version(kind, name, key)
        self._call(
            "extending retention of",
            kind,
            name,
            lambda: self._client.put_object_retention(
                Bucket=self.location.bucket,
                Key=key,
                VersionId=version,
                Retention={"Mode": mode, "RetainUntilDate": until},
            ),
        )

    def modified(self, kind: ObjectKind) -> dict[str, datetime]:
        """When each object of `kind` was written (its first version)."""
        out: dict[str, datetime] = {}
        for key, versions in self._versions_of(kind).items():
            real = [v for v in versions if not v[2]]
            if real:
                out[key.rsplit("/", 1)[-1]] = real[-1][3]
        return out

    # --- internals ----------------------------------------------------------------------

    def _lock_args(self, kind: ObjectKind) -> dict[str, Any]:
        if self.lock is None or kind in _UNLOCKED:
            return {}
        return {"ObjectLockMode": self.lock.mode.upper(), "ObjectLockRetainUntilDate": self.lock.until()}

    def _versioned_read(self, kind: ObjectKind) -> bool:
        return self.lock is not None and kind not in _UNLOCKED

    def _first_version(self, kind: ObjectKind, name: str, key: str) -> tuple[str, int]:
        with self._versions_lock:
            known = self._versions.get(key)
        if known is not None:
            return known
        versions = self._versions_of(kind, key).get(key, [])
        real = [v for v in versions if not v[2]]
        if not real:
            raise ObjectMissingError(f"{self.describe()}: {kind}/{name} does not exist")
        first = (real[-1][0], real[-1][1])  # listed newest first
        with self._versions_lock:
            self._versions[key] = first
        return first

    def _list_first_versions(self, kind: ObjectKind) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for key, versions in self._versions_of(kind).items():
            real = [v for v in versions if not v[2]]
            name = key.rsplit("/", 1)[-1]
            if real and _NAME.match(name):
                out[name] = (real[-1][0], real[-1][1])
                with self._versions_lock:
                    self._versions[key] = out[name]
        return out

    def _versions_of(self, kind: ObjectKind, key: str | None = None) -> _Versions:
        """Every version of each key under the kind (or of `key`): (id, size, is delete marker,
        modified), newest first as S3 lists them."""
        prefix = key if key is not None else self._kind_prefix(kind)
        pages = self._client.get_paginator("list_object_versions").paginate(
            Bucket=self.location.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
        )
        out: _Versions = {}
        for page in self._pages(kind, pages):
            for v in page.get("Versions", ()):
                if key is None or v["Key"] == key:
                    out.setdefault(v["Key"], []).append((v["VersionId"], int(v["Size"]), False, v["LastModified"]))
            for m in page.get("DeleteMarkers", ()):
                if key is None or m["Key"] == key:
                    out.setdefault(m["Key"], []).append((m["VersionId"], 0, True, m["LastModified"]))
        for versions in out.values():
            versions.sort(key=lambda v: v[3], reverse=True)
        return out

    def _delete_versions(self, kind: ObjectKind, name: str, key: str) -> None:
        versions = self._versions_of(kind, key).get(key, [])
        if not any(not v[2] for v in versions):
            raise ObjectMissingError(f"{self.describe()}: {kind}/{name} does not exist")
        locked = []
        for version, _, _, _ in versions:
            try:
                self._call(
                    "deleting",
                    kind,
                    name,
                    lambda v=version: self._client.delete_object(  # type: ignore[misc]
                        Bucket=self.location.bucket, Key=key, VersionId=v
                    ),
                )
            except ObjectMissingError:
                continue
            except RepositoryError as err:
                if "permission denied" not in err.message:
                    raise
                locked.append(version)
        self._forget(key)
        if locked:
            raise ObjectLockedError(
                f"{self.describe()}: {kind}/{name} is under object-lock retention ({len(locked)} version(s) kept)",
                hint="it can go once its retention ends; prune retries then",
            )

    def _forget(self, key: str) -> None:
        with self._versions_lock:
            self._versions.pop(key, None)

    def _read(self, args: dict[str, Any]) -> bytes:
        reply = self._client.get_object(**args)
        body = reply["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def _put_multipart(self, key: str, data: bytes, extra: dict[str, Any]) -> None:
        from s3transfer.manager import TransferConfig, TransferManager

        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNK,
            max_request_concurrency=4,
        )

        def upload() -> None:
            with TransferManager(self._client, config) as manager:
                manager.upload(io.BytesIO(bytes(data)), self.location.bucket, key, extra_args=extra or None).result()

        self._call("writing", ObjectKind.DATA, key, upload)
        self._forget(key)

    def _pages(self, kind: ObjectKind, pages: Any) -> Iterator[dict[str, Any]]:
        iterator = iter(pages)
        while True:
            try:
                page = self._call("listing", kind, "", lambda: next(iterator, None))
            except ObjectMissingError:
                return
            if page is None:
                return
            yield page

    def _call(self, verb: str, kind: ObjectKind, name: str, request: Callable[[], Any]) -> Any:
        """Run one request (botocore retries transient errors) and translate what is final."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return request()
        except ClientError as err:
            raise self._client_error(verb, kind, name, err) from None
        except BotoCoreError as err:
            raise RepositoryError(
                f"{self.describe()}: {verb} {kind}/{name}: {err}",
                hint=f"is the endpoint reachable? the request was tried {self._attempts} times in all, with backoff",
            ) from None
        except Exception as err:  # s3transfer wraps failures of parallel parts in its own errors
            if type(err).__module__.startswith(("s3transfer", "boto3")):
                raise RepositoryError(f"{self.describe()}: {verb} {kind}/{name}: {err}") from None
            raise

    def _client_error(self, verb: str, kind: ObjectKind, name: str, err: Any) -> RepositoryError:
        error = err.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        what = f"{self.describe()}: {verb} {kind}/{name}"
        if code in _CONFLICT or status in ("412",):
            return _Conflict(f"{what}: the object exists")
        if code == "InvalidRange" or status == "416":
            return _RangeError(f"{what}: past the end")
        if code in _MISSING or (status == "404" and code not in ("NoSuchBucket",)):
            return ObjectMissingError(f"{what}: does not exist")
        if code == "NoSuchBucket":
            return RepositoryError(
                f"{what}: bucket {self.location.bucket!r} does not exist",
                hint="create it (with object lock if the Storage sets objectLock), see docs/object-storage.md",
            )
        if code in _DENIED or status == "403":
            return RepositoryError(
                f"{what}: permission denied ({code})", hint="check the Storage's credentials and what their key may do"
            )
        return RepositoryError(f"{what}: {code or status}: {error.get('Message', '')}".rstrip(": "))

    def _kind_prefix(self, kind: ObjectKind) -> str:
        return f"{self._prefix}{kind.value}/"

    def _key(self, kind: ObjectKind, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"invalid object name {name!r}")
        if kind is ObjectKind.DATA:
            return f"{self._prefix}data/{name[:2]}/{name}"
        return f"{self._prefix}{kind.value}/{name}"


class _Conflict(RepositoryError):
    """A conditional write lost: the name exists."""


class _RangeError(RepositoryError):
    """A range starting at or past the end of the object."""


def wait_for_endpoint(location: S3Location, credentials: S3Credentials | None, timeout_s: float) -> None:
    """Until the endpoint answers S3 (for tests and `weed` start-up); RepositoryError after `timeout_s`."""
    client = make_client(location, credentials, max_attempts=1, connect_timeout_s=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.list_buckets()
            return
        except Exception as err:
            if time.monotonic() >= deadline:
                raise RepositoryError(
                    f"s3 endpoint {location.endpoint} did not answer in {timeout_s:.0f} s: {err}"
                ) from None
            time.sleep(0.2)
