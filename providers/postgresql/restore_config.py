"""Where and how a restored PostgreSQL copy listens, and how its wait is judged: pure functions.

A restored data directory carries the source's `postgresql.conf`, `postgresql.auto.conf` and
`pg_hba.conf`, but not the source's command line (`postmaster.opts` is not backed up), so the
copy would otherwise listen wherever those files say: another socket directory than the one
protectctl polls (a source started with `-k DIR`), the source's addresses, trust for TCP.
The copy is therefore started with command-line settings, which beat every file:
`server_options`. Its `pg_hba.conf` keeps `local` lines but never `trust` over TCP:
`hba_without_tcp_trust`. `RecoveryWatch` decides, from what the server and its log show,
whether recovery still moves (see docs/postgresql.md, "Restore").
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LISTEN_ADDRESS = "127.0.0.1"
TCP_TRUST_REPLACEMENT = "scram-sha-256"
_HOST_TYPES = frozenset({"host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"})
_METHODS = frozenset(
    {
        "trust",
        "reject",
        "scram-sha-256",
        "md5",
        "password",
        "gss",
        "sspi",
        "ident",
        "peer",
        "pam",
        "ldap",
        "radius",
        "cert",
        "bsd",
    }
)
_ELEMENT = r'(?:"(?:[^"]|"")*"|[^\s"#,]+)'
_TOKEN = re.compile(_ELEMENT + r"(?:\s*,\s*" + _ELEMENT + ")*")  # `db1, db2` is one field


def socket_dir_problem(path: str) -> str | None:
    """Why `path` cannot be a socket directory given on the server's command line, or None."""
    if any(c in path for c in ',"') or any(ord(c) < 32 for c in path):
        return "it must not contain a comma, a double quote or a control character"
    if len(path.encode()) + len("/.s.PGSQL.65535") > 107:
        return "it is too long for a Unix socket path (at most 92 bytes)"
    return None


def server_options(*, port: int, socket_dir: Path, hba_file: Path | None, listen: str = LISTEN_ADDRESS) -> str:
    """`pg_ctl -o` text: settings on the server's command line, one shell word each.

    pg_ctl hands this string to /bin/sh, so every word is shell-quoted. `lc_messages=C`: the
    server's messages are read by protectctl (a connection's FATAL line, "recovery stopping").
    `hba_file` None: the one the configuration names (an in-place restore: the source itself).
    """
    settings = {
        "port": str(port),
        "listen_addresses": listen,
        "unix_socket_directories": str(socket_dir),
        **({"hba_file": str(hba_file)} if hba_file is not None else {}),
        "lc_messages": "C",
    }
    return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items())


def conf_setting(texts: list[str], name: str) -> str | None:
    """The value the last of `texts` (configuration files, in reading order) gives `name`, else None."""
    pattern = re.compile(r"^\s*" + re.escape(name) + r"\s*=?\s*(?:'((?:[^']|'')*)'|([^\s#]+))", re.IGNORECASE)
    found = None
    for text in texts:
        for line in text.splitlines():
            m = pattern.match(line)
            if m:
                found = m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2)
    return found


@dataclass(frozen=True, slots=True)
class HbaRewrite:
    text: str
    changed: tuple[int, ...]  # line numbers (1-based) of the records rewritten
    includes: tuple[int, ...]  # line numbers of include directives (their files are not read)


def hba_without_tcp_trust(text: str) -> HbaRewrite:
    """`text` (a pg_hba.conf) with every `host*` record's `trust` method made scram-sha-256.

    A restored copy listens on TCP (127.0.0.1): a `trust` carried from the source would let any
    local process log in as any role, superuser included. `local` (socket) records stay as they
    are: the socket directory's permissions guard them, as on the source. A record continued on
    the next line (`\\` at the end) is joined into one line when it is rewritten.
    """
    out: list[str] = []
    changed: list[int] = []
    includes: list[int] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        first = i
        logical = lines[i]
        while _continued(logical) and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i].lstrip()
        i += 1
        code = _without_comment(logical)
        tokens = [(m.start(), m.end(), m.group(0)) for m in _TOKEN.finditer(code)]
        kind = tokens[0][2].lower() if tokens else ""
        if kind.startswith("include"):
            includes.append(first + 1)
        method = _method_token(tokens) if kind in _HOST_TYPES else None
        if method is not None and method[2].lower() == "trust":
            start, end, _ = method
            out.append(logical[:start] + TCP_TRUST_REPLACEMENT + logical[end:])
            changed.append(first + 1)
        else:
            out.extend(lines[first:i])
    return HbaRewrite("\n".join(out), tuple(changed), tuple(includes))


def _continued(line: str) -> bool:
    code = _without_comment(line)
    return code == line and line.rstrip().endswith("\\")


def _without_comment(line: str) -> str:
    quoted = False
    for pos, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:pos]
    return line


def _method_token(tokens: list[tuple[int, int, str]]) -> tuple[int, int, str] | None:
    """The auth method of a host record: after type, database, user, address, and a mask when
    the address is a bare IP address (`host all all 10.0.0.1 255.255.255.255 trust`)."""
    for index in (4, 5):
        if index < len(tokens) and tokens[index][2].lower() in _METHODS:
            return tokens[index]
    return None


# -- judging a restore's wait ----------------------------------------------------------------------

# What a connection to a server still starting, recovering without hot standby or shutting down is
# told (lc_messages=C): worth another try. Any other FATAL (a missing role, authentication, no
# pg_hba.conf entry, a missing database) will be said again at every try: reported at once.
_TRANSIENT = re.compile(
    r"the database system is (starting up|not yet accepting connections|not accepting "
    r"connections|in recovery mode|shutting down)|too many clients|"
    r"consistent recovery state has not been yet reached",
    re.IGNORECASE,
)
_RESTORED = re.compile(r'restored log file "([0-9A-F]{24}(?:\.partial)?)" from archive')
_REDO = re.compile(r"redo in progress, elapsed time: [^,]*, current LSN: ([0-9A-F]+/[0-9A-F]+)")
_STAGES = (
    ("consistent recovery state reached", "consistent"),
    ("redo starts at", "replaying"),
    ("recovery stopping", "target reached"),
    ("pausing at the end of recovery", "paused at the target"),
    ("selected new timeline ID", "promoting"),
    ("archive recovery complete", "promoting"),
    ("database system is ready to accept connections", "ready"),
)


def permanent_connect_error(message: str) -> bool:
    """True when `message` (psql's, see cluster.server_message) will not change by waiting."""
    return message.startswith("FATAL:") and not _TRANSIENT.search(message)


@dataclass(slots=True)
class RecoveryWatch:
    """How far recovery went and when it last moved.

    Progress is any new fact: a higher replay LSN or transaction time (asked over SQL once the
    copy accepts connections), a WAL file restored or a stage reached (its log, read as it grows),
    or one more WAL file decrypted for it. `stalled` is true after `timeout_s` without any.
    """

    timeout_s: float
    started: float
    last_change: float = 0.0
    lsn: str = ""
    xact_time: str = ""
    wal_file: str = ""
    stage: str = "starting"
    staged: int = 0
    _partial: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.last_change = self.started

    def observe(
        self,
        now: float,
        *,
        lsn: str | None = None,
        xact_time: str | None = None,
        log_text: str = "",
        staged: int | None = None,
    ) -> None:
        before = (self.lsn, self.xact_time, self.wal_file, self.stage, self.staged)
        if lsn and _lsn_value(lsn) > _lsn_value(self.lsn):
            self.lsn = lsn
        if xact_time and xact_time > self.xact_time:
            self.xact_time = xact_time
        if staged is not None:
            self.staged = max(self.staged, staged)
        if log_text:
            self._read_log(log_text)
        if (self.lsn, self.xact_time, self.wal_file, self.stage, self.staged) != before:
            self.last_change = now

    def _read_log(self, text: str) -> None:
        text = self._partial + text
        complete, _, self._partial = text.rpartition("\n")
        for line in complete.splitlines():
            m = _RESTORED.search(line)
            if m:
                self.wal_file = m.group(1)
            m = _REDO.search(line)
            if m and _lsn_value(m.group(1)) > _lsn_value(self.lsn):
                self.lsn = m.group(1)
            for needle, stage in _STAGES:
                if needle in line:
                    self.stage = stage

    def stalled(self, now: float) -> bool:
        return now - self.last_change > self.timeout_s

    def describe(self) -> str:
        parts = [self.stage]
        if self.lsn:
            parts.append(f"replayed up to LSN {self.lsn}")
        if self.xact_time:
            parts.append(f"last transaction {self.xact_time}")
        if self.wal_file:
            parts.append(f"last WAL file {self.wal_file}")
        return ", ".join(parts)


def _lsn_value(text: str) -> int:
    high, sep, low = text.strip().partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if sep else -1
    except ValueError:
        return -1


def recovery_timeout_s(spec: Mapping[str, object], options: Mapping[str, object]) -> float:
    """The restore's no-progress limit: the `recovery_timeout_s` option (tests), else the spec's
    `recoveryTimeout` (a duration text or seconds), else 10 minutes."""
    given = options.get("recovery_timeout_s")
    if given is not None:
        return float(str(given))
    value = spec.get("recovery_timeout")
    if value is None or value == "":
        return 600.0
    if isinstance(value, int | float):
        return float(value)
    seconds = getattr(value, "seconds", None)
    if isinstance(seconds, int):
        return float(seconds)
    from protectctl.units import Duration

    return float(Duration.parse(str(value)).seconds)
