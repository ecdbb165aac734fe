"""The postgres state backend: a table of states plus advisory locks (like Terraform's pg backend).

`<schema>.states` holds one row per state name (the JSON, lineage and serial beside it for
people who query it); `<schema>.locks` names who holds each state's lock. The lock itself is a
session advisory lock on its own connection, held for as long as the command runs: when the
holder dies its session ends and PostgreSQL releases the lock, so a dead holder never strands
it, and a live one is never broken (unless `state unlock --force`, which ends its session).
The DSN is a secret (it may carry a password): it is never put in a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from protectctl.errors import StateError, StateLockedError
from protectctl.state.model import State


class PostgresStateBackend:
    def __init__(self, dsn: str, *, schema: str = "protectctl", name: str = "default") -> None:
        self._dsn = dsn
        self.schema = schema
        self.name = name
        self._ready = False

    def describe(self) -> str:
        return f"postgres:{self.schema}.states[{self.name}]"

    # --- state ------------------------------------------------------------------------

    def read(self) -> State:
        row = self._one(f"SELECT data FROM {self.schema}.states WHERE name = %s", (self.name,))
        if row is None:
            return State()
        try:
            return State.model_validate_json(row[0])
        except ValidationError as err:
            raise StateError(
                f"state {self.describe()} is damaged or not a protectctl state ({err.error_count()} problem(s))"
            ) from None

    def exists(self) -> bool:
        return self._one(f"SELECT 1 FROM {self.schema}.states WHERE name = %s", (self.name,)) is not None

    def write(self, state: State) -> None:
        data = state.model_dump_json(indent=2)
        self._run(
            f"INSERT INTO {self.schema}.states (name, lineage, serial, data, updated_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (name) DO UPDATE SET lineage = EXCLUDED.lineage, "
            "serial = EXCLUDED.serial, data = EXCLUDED.data, updated_at = now()",
            (self.name, state.lineage, state.serial, data),
        )

    # --- lock -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout_s: float) -> Iterator[None]:
        conn = self._connect()
        try:
            self._acquire(conn, timeout_s)
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": command,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._execute(
                conn,
                f"INSERT INTO {self.schema}.locks (name, holder, backend_pid) "
                "VALUES (%s, %s, pg_backend_pid()) ON CONFLICT (name) DO UPDATE SET "
                "holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid",
                (self.name, json.dumps(holder)),
            )
            try:
                yield
            finally:
                with contextlib.suppress(StateError):
                    self._execute(
                        conn,
                        f"DELETE FROM {self.schema}.locks WHERE name = %s AND backend_pid = pg_backend_pid()",
                        (self.name,),
                    )
                    self._execute(conn, "SELECT pg_advisory_unlock(hashtext(%s))", (self._lock_name(),))
        finally:
            conn.close()

    def _acquire(self, conn: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._execute(conn, "SELECT pg_try_advisory_lock(hashtext(%s))", (self._lock_name(),))
            if got and got[0]:
                return
            if time.monotonic() >= deadline:
                raise StateLockedError(
                    f"the state is locked by {self._holder_soon() or 'another session'}",
                    hint="wait for it to finish, pass --lock-timeout 5m, or `protectctl state unlock` if that "
                    "process is gone (a dead holder's session ends and frees the lock)",
                )
            time.sleep(0.2)

    def _holder_soon(self) -> str | None:
        """The holder, waiting a moment for its record: a holder writes it right after taking the
        advisory lock, so a refusal in between would otherwise name nobody."""
        for _ in range(20):
            who = self.holder()
            if who is not None:
                return who
            time.sleep(0.1)
        return None

    def holder(self) -> str | None:
        row = self._one(f"SELECT holder FROM {self.schema}.locks WHERE name = %s", (self.name,))
        if row is None:
            return None
        info = json.loads(row[0])
        return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('time')})"

    def unlock(self, force: bool = False) -> str:
        conn = self._connect()
        try:
            got = self._execute(conn, "SELECT pg_try_advisory_lock(hashtext(%s))", (self._lock_name(),))
            who = self.holder()
            if got and got[0]:
                self._execute(conn, "SELECT pg_advisory_unlock(hashtext(%s))", (self._lock_name(),))
                self._execute(conn, f"DELETE FROM {self.schema}.locks WHERE name = %s", (self.name,))
                return who or "no lock"
            if not force:
                raise StateLockedError(
                    f"the lock is held by a live process: {who}",
                    hint="stop that process first, or pass --force to break the lock",
                )
            self._execute(
                conn, f"SELECT pg_terminate_backend(backend_pid) FROM {self.schema}.locks WHERE name = %s", (self.name,)
            )
            self._execute(conn, f"DELETE FROM {self.schema}.locks WHERE name = %s", (self.name,))
            return who or "a session without a holder record"
        finally:
            conn.close()

    # --- database ---------------------------------------------------------------------

    def _lock_name(self) -> str:
        return f"protectctl-state:{self.schema}:{self.name}"

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StateError(
                "the postgres state backend needs psycopg, which is not installed here",
                hint="the postgres state backend comes with pip install 'protectctl[postgres-state]'",
            ) from None

        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise StateError(
                f"cannot reach the postgres state backend: {_first_line(err)}",
                hint="the state lives only there: make the database reachable (nothing was "
                "read from or written to a local copy)",
            ) from None
        if not self._ready:
            # CREATE ... IF NOT EXISTS is not safe against a concurrent twin (both may insert the
            # catalog row): runners starting at once create the tables one after the other
            self._execute(conn, "SELECT pg_advisory_lock(hashtext(%s))", (f"protectctl-state-ddl:{self.schema}",))
            self._execute(conn, f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            self._execute(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self.schema}.states (name text PRIMARY KEY, "
                "lineage text NOT NULL, serial bigint NOT NULL, data text NOT NULL, "
                "updated_at timestamptz NOT NULL)",
            )
            self._execute(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self.schema}.locks (name text PRIMARY KEY, "
                "holder text NOT NULL, backend_pid integer NOT NULL)",
            )
            self._execute(conn, "SELECT pg_advisory_unlock(hashtext(%s))", (f"protectctl-state-ddl:{self.schema}",))
            self._ready = True
        return conn

    def _execute(self, conn: Any, sql: str, params: tuple[object, ...] = ()) -> Any:
        import psycopg

        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone() if cur.description else None
        except psycopg.errors.UniqueViolation:
            return None  # two first runs creating the schema at once: the other one made it
        except psycopg.Error as err:
            raise StateError(f"postgres state backend: {_first_line(err)}") from None

    def _one(self, sql: str, params: tuple[object, ...]) -> Any:
        conn = self._connect()
        try:
            return self._execute(conn, sql, params)
        finally:
            conn.close()

    def _run(self, sql: str, params: tuple[object, ...]) -> None:
        self._one(sql, params)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
