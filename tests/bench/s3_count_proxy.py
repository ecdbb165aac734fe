"""A counting HTTP proxy in front of an S3 endpoint (for tests/bench/bench_s3.py `--trace`).

Forwards every request unchanged (the Host header too, so SigV4 signatures stay valid) and
records, per request: the S3 kind (GET, PUT, HEAD, LIST, DELETE, POST), bytes each way and
latency. It sees any client's traffic, so it counts restic's round trips the way
`PROTECTCTL_S3_TRACE` counts protectctl's.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def kind_of(method: str, path: str) -> str:
    split = urlsplit(path)
    if method == "GET" and (split.path.rstrip("/").count("/") <= 1 or "list-type" in split.query):
        return "LIST"
    return method


class CountingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.records: list[dict[str, Any]] = []
        lock = threading.Lock()
        records = self.records

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                start = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response_only(reply.status, reply.reason)
                for k, v in reply.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header(
                    "Content-Length",
                    str(len(data)) if self.command != "HEAD" else reply.getheader("Content-Length", "0"),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                with lock:
                    records.append(
                        {
                            "op": kind_of(self.command, self.path),
                            "method": self.command,
                            "status": reply.status,
                            "sent": length,
                            "received": len(data),
                            "ms": round((time.perf_counter() - start) * 1000, 1),
                        }
                    )

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


KIND_OF_OP = {
    "GetObject": "GET",
    "PutObject": "PUT",
    "HeadObject": "HEAD",
    "HeadBucket": "HEAD",
    "ListObjectsV2": "LIST",
    "ListObjectVersions": "LIST",
    "DeleteObject": "DELETE",
}


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind: requests, MB sent, MB received, total and mean ms."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        kind = KIND_OF_OP.get(r["op"], r["op"])
        row = out.setdefault(kind, {"requests": 0, "sent_mb": 0.0, "received_mb": 0.0, "ms_total": 0.0})
        row["requests"] += 1
        row["sent_mb"] += r["sent"] / 1e6
        row["received_mb"] += r["received"] / 1e6
        row["ms_total"] += r["ms"]
    for row in out.values():
        row["ms_mean"] = round(row["ms_total"] / row["requests"], 1)
        row["sent_mb"] = round(row["sent_mb"], 2)
        row["received_mb"] = round(row["received_mb"], 2)
        row["ms_total"] = round(row["ms_total"], 1)
    return out
