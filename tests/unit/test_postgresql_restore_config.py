"""How a restored PostgreSQL copy is told where to listen, its pg_hba.conf made safe for TCP, and
its wait judged (providers/postgresql/restore_config.py): pure functions, no server."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from protectctl.providers.postgresql import cluster as pg
from protectctl.providers.postgresql.restore_config import (
    RecoveryWatch,
    conf_setting,
    hba_without_tcp_trust,
    permanent_connect_error,
    recovery_timeout_s,
    server_options,
    socket_dir_problem,
)
from protectctl.providers.postgresql.spec import PostgresqlMember


def test_server_options_are_shell_words_that_set_where_the_copy_listens() -> None:
    text = server_options(port=5444, socket_dir=Path("/run/pg sock"), hba_file=Path("/srv/it's/pg_hba.conf"))
    words = shlex.split(text)  # what /bin/sh (pg_ctl -o) makes of it
    pairs = dict(w.split("=", 1) for w in words if w != "-c")
    assert words[::2] == ["-c"] * 5
    assert pairs == {
        "port": "5444",
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "/run/pg sock",
        "hba_file": "/srv/it's/pg_hba.conf",
        "lc_messages": "C",
    }
    in_place = server_options(port=5432, socket_dir=Path("/run/pg"), hba_file=None)  # the source's own hba_file
    assert "hba_file" not in in_place and "listen_addresses=127.0.0.1" in in_place


def test_socket_dirs_the_command_line_cannot_carry_are_refused() -> None:
    assert socket_dir_problem("/var/run/postgresql") is None
    assert socket_dir_problem("/a,b") and socket_dir_problem('/a"b') and socket_dir_problem("/a\nb")
    assert "too long" in str(socket_dir_problem("/" + "x" * 100))


HBA = """\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust   # loopback
host    "my db", other  all             ::1/128                 Trust
hostssl all             all             10.0.0.1 255.255.255.255 trust
hostnossl all           all             0.0.0.0/0               scram-sha-256
host    all             trust           samenet                 md5
host    replication     all             192.168.0.0/16 \\
                                        trust clientcert=verify-ca
#host   all             all             0.0.0.0/0               trust
host    all             all             fe80::/10               "trust"
"""


def test_tcp_trust_records_become_scram_and_socket_records_stay() -> None:
    out = hba_without_tcp_trust(HBA)
    lines = out.text.split("\n")
    assert out.changed == (3, 4, 5, 8)
    assert lines[1] == "local   all             all                                     trust"  # socket: kept
    assert lines[2] == "host    all             all             127.0.0.1/32            scram-sha-256   # loopback"
    assert lines[3].endswith("::1/128                 scram-sha-256")  # `"my db", other` is one field
    assert lines[4].endswith("10.0.0.1 255.255.255.255 scram-sha-256")  # a mask before the method
    assert "hostnossl" in lines[5] and lines[5].endswith("scram-sha-256")  # untouched
    assert lines[6].endswith("samenet                 md5")  # a role named trust is not a method
    joined = lines[7]  # a continued record, joined when rewritten
    assert joined.startswith("host    replication") and "scram-sha-256 clientcert=verify-ca" in joined
    assert lines[8].startswith("#host") and lines[8].endswith("trust")  # a comment
    assert lines[9].endswith('"trust"')  # quoted: a keyword no longer (PostgreSQL rejects it anyway)
    assert not hba_without_tcp_trust(out.text).changed  # idempotent


def test_include_directives_are_reported_not_followed() -> None:
    out = hba_without_tcp_trust("include_dir conf.d\nlocal all all peer\n")
    assert out.includes == (1,) and out.changed == ()


def test_conf_setting_takes_the_last_value_of_the_last_file() -> None:
    main = "hba_file = '/etc/pg/pg_hba.conf'\n#hba_file = '/nope'\n"
    auto = "hba_file='/etc/pg/it''s.conf' # comment\n"
    assert conf_setting([main], "hba_file") == "/etc/pg/pg_hba.conf"
    assert conf_setting([main, auto], "hba_file") == "/etc/pg/it's.conf"
    assert conf_setting(["port 5433\n"], "port") == "5433"
    assert conf_setting([main], "ident_file") is None


@pytest.mark.parametrize(
    ("message", "permanent"),
    [
        ('FATAL: role "nobody" does not exist', True),
        ('FATAL: Peer authentication failed for user "app"', True),
        ('FATAL: no pg_hba.conf entry for host "[local]", user "x", database "postgres"', True),
        ("FATAL: the database system is starting up", False),
        ("FATAL: the database system is not yet accepting connections", False),
        ("FATAL: the database system is shutting down", False),
        ('connection to server on socket "/x/.s.PGSQL.5" failed: No such file or directory', False),
    ],
)
def test_which_connection_errors_waiting_cannot_fix(message: str, permanent: bool) -> None:
    assert permanent_connect_error(message) is permanent


def test_server_message_is_the_servers_own_line() -> None:
    stderr = (
        'psql: error: connection to server on socket "/tmp/s/.s.PGSQL.5432" failed: '
        'FATAL:  role "backup" does not exist\n'
    )
    assert pg.server_message(stderr) == 'FATAL: role "backup" does not exist'
    refused = (
        'psql: error: connection to server on socket "/tmp/s/.s.PGSQL.5432" failed: No such file or '
        "directory\n\tIs the server running locally and accepting connections on that socket?\n"
    )
    assert pg.server_message(refused).startswith('connection to server on socket "/tmp/s/.s.PGSQL.5432" failed')
    assert "Is the server running" in pg.server_message(refused)


def test_recovery_watch_times_out_only_without_progress() -> None:
    watch = RecoveryWatch(timeout_s=10, started=0.0)
    watch.observe(5.0, log_text='LOG:  restored log file "000000010000000000000003" from archive\nLOG:  red')
    assert watch.wal_file == "000000010000000000000003" and watch.last_change == 5.0
    watch.observe(9.0, log_text="o starts at 0/3000028\n")  # a line split between two reads
    assert watch.stage == "replaying"
    watch.observe(18.0, lsn="0/3000100", xact_time="2026-12-03 07:00:00+00")
    watch.observe(27.0, lsn="0/3000100", staged=0)  # the same facts again: no progress
    assert not watch.stalled(28.0) and watch.stalled(28.5)
    watch.observe(28.6, lsn="0/10000000")  # a higher LSN (compared as numbers, not text)
    assert not watch.stalled(38.0)
    watch.observe(39.0, lsn="0/9000000", staged=0)  # lower values never move it back
    assert watch.lsn == "0/10000000" and watch.stalled(39.0)
    assert watch.describe() == (
        "replaying, replayed up to LSN 0/10000000, last transaction 2026-12-03 "
        "07:00:00+00, last WAL file 000000010000000000000003"
    )


def test_recovery_timeout_from_option_spec_or_default() -> None:
    assert recovery_timeout_s({}, {}) == 600
    assert recovery_timeout_s({"recovery_timeout": "2m"}, {}) == 120
    assert recovery_timeout_s({"recovery_timeout": 30}, {}) == 30
    assert recovery_timeout_s({"recovery_timeout": "2m"}, {"recovery_timeout_s": 1.5}) == 1.5
    spec = PostgresqlMember.model_validate({"dataDir": "/d", "recoveryTimeout": "1h"})
    assert spec.recovery_timeout.seconds == 3600
    assert recovery_timeout_s(spec.model_dump(mode="json"), {}) == 3600


def test_user_is_a_validated_role_passed_to_every_client() -> None:
    spec = PostgresqlMember.model_validate({"dataDir": "/d", "user": "backup"})
    cluster = pg.Cluster.from_spec(spec.model_dump())
    assert pg.psql_argv(cluster)[-5:] == ["5432", "-U", "backup", "-d", "postgres"]
    assert "-U" not in pg.conn_args(pg.Cluster.from_spec({"data_dir": "/d"}))
    for bad in ("-U", "a b", "x;y", "", "r" * 64):
        with pytest.raises(ValueError):
            PostgresqlMember.model_validate({"dataDir": "/d", "user": bad})


def test_validate_refuses_a_socket_dir_the_command_line_cannot_carry() -> None:
    from protectctl.provider import load_provider

    provider = load_provider("postgresql")
    spec = PostgresqlMember.model_validate(
        {"dataDir": "/d", "socketDir": "/run/a,b", "allowRestart": True, "perHost": {"db2": {"socketDir": '/run/"q"'}}}
    )
    problems = provider.check_member(spec, source="g/m", hosts=("db1", "db2"))  # type: ignore[attr-defined]
    paths = {p.path for p in problems if not p.warning}
    assert paths == {("socketDir",), ("perHost", "db2", "socketDir")}, problems
