"""The policy loader and its rules, on real files: every problem located, all of them at once.

The fuzz part throws random text, malformed YAML, wrong types and random nested structures
at `load_policy`: the answer is a Policy or a PolicyError whose diagnostics all name a
file:line:col inside the file, never another exception.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from protectctl.errors import Diagnostic, PolicyError, Severity
from protectctl.policy.load import Policy, load_policy
from protectctl.policy.model import Kind, SLASpec
from tests.conftest import QUICKSTART, run_cli, write_policy

QUICKSTART_TEXT = (QUICKSTART / "protect.yaml").read_text(encoding="utf-8")

HOST = """apiVersion: protectctl/v1
kind: Host
metadata: {name: local}
spec: {address: local, root: ./root}
"""
KEY = """apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {name: repo-key}
spec:
  passphrase: {file: ./passphrase}
"""
STORAGE = """apiVersion: protectctl/v1
kind: Storage
metadata: {name: primary}
spec: {type: local, path: ./repo, encryption: {key: repo-key}}
"""


def sla(
    name: str = "tier1",
    *,
    sync: str = "every 15m",
    full: str = "daily at 20:00",
    disk: str = "14d",
    extra: str = "",
) -> str:
    return f"""apiVersion: protectctl/v1
kind: SLA
metadata: {{name: {name}}}
spec:
  sync: {sync}
  full: {full}
  retention: {{disk: {disk}}}
{extra}"""


def group(name: str = "docs", *, sla_name: str = "tier1", members: str = "") -> str:
    members = members or "    - {name: home, host: local, filesystem: {path: ./data}}\n"
    return f"""apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: {name}}}
spec:
  sla: {sla_name}
  storage: primary
  members:
{members}"""


def base(*extra: str, sla_doc: str | None = None) -> list[str]:
    return [HOST, KEY, STORAGE, sla() if sla_doc is None else sla_doc, *extra]


def errors_of(directory: Path) -> list[Diagnostic]:
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    return [d for d in info.value.diagnostics if d.severity is Severity.ERROR]


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the n-th occurrence of needle."""
    seen = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")


# --- precise cases -------------------------------------------------------------------


def test_quickstart_is_valid() -> None:
    policy = load_policy(QUICKSTART)
    assert set(policy.of(Kind.PROTECTION_GROUP)) == {"docs"}
    assert not [w for w in policy.warnings if w.severity is Severity.ERROR]


def _three_errors(directory: Path) -> Path:
    text = (
        QUICKSTART_TEXT.replace("  scheduler: systemd", "  schedulr: systemd")  # unknown field
        .replace("retention: {disk: 14d}", "retention: {disk: 14 fortnights}")  # bad duration
        .replace("  storage: primary", "  storage: secondary")
    )  # undefined reference
    return write_policy(directory, text)


def test_three_errors_three_locations(tmp_path: Path) -> None:
    directory = _three_errors(tmp_path / "p")
    file = directory / "protect.yaml"
    errors = errors_of(directory)
    assert [(d.location.file, d.location.line) for d in errors if d.location] == [
        (file, line_of(file, "schedulr:")),
        (file, line_of(file, "fortnights")),
        (file, line_of(file, "storage: secondary")),
    ]
    assert "did you mean `scheduler`" in (errors[0].detail or "")
    assert "fortnights" in errors[1].summary
    assert "'secondary' is not defined" in errors[2].summary and "primary" in (errors[2].detail or "")


def test_three_errors_cli(tmp_path: Path) -> None:
    directory = _three_errors(tmp_path / "p")
    proc = run_cli(directory, "validate", expect=1)
    located = re.findall(r"^(\S+\.yaml):(\d+):(\d+): error: ", proc.stderr, flags=re.M)
    assert len(located) == 3, proc.stderr
    assert all(Path(f) == directory / "protect.yaml" for f, _, _ in located)
    assert "3 problem(s)" in proc.stderr
    assert proc.stdout == ""


def test_broken_document_is_not_reported_again_as_undefined(tmp_path: Path) -> None:
    # the SLA has a bad field; the group naming it must not add "SLA 'tier1' is not defined"
    write_policy(tmp_path, base(group(), sla_doc=sla(full="fortnightly")))
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and "full" in errors[0].summary


def test_duplicate_names(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group(), STORAGE))
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert "duplicate Storage name 'primary'" in errors[0].summary
    assert errors[0].location is not None
    assert errors[0].location.line == line_of(tmp_path / "protect.yaml", "metadata: {name: primary}", 2)


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group()))
    write_policy(tmp_path / "more", [sla()], name="tiers.yml")
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and "duplicate SLA name 'tier1'" in errors[0].summary
    # files load in path order: more/tiers.yml first, so protect.yaml holds the duplicate
    assert errors[0].location is not None and errors[0].location.file.name == "protect.yaml"
    assert "tiers.yml" in (errors[0].detail or "")


def test_data_source_in_two_groups(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        base(
            group("docs"),
            group("more-docs", members=("    - {name: other, host: local, filesystem: {path: ./data/./}}\n")),
        ),
    )
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert "already protected by docs/home" in errors[0].summary
    assert errors[0].location is not None
    assert errors[0].location.line == line_of(tmp_path / "protect.yaml", "name: other")


def test_member_names_unique(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        base(
            group(
                members=(
                    "    - {name: home, host: local, filesystem: {path: ./a}}\n"
                    "    - {name: home, host: local, filesystem: {path: ./b}}\n"
                )
            )
        ),
    )
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and "member name 'home' is used twice" in errors[0].summary
    assert errors[0].location is not None
    assert errors[0].location.line == line_of(tmp_path / "protect.yaml", "path: ./b")


def test_filesystem_sync_more_often_than_15m(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group(), sla_doc=sla(sync="every 5m")))
    errors = errors_of(tmp_path)
    assert len(errors) == 2 and all("more often than every 15m" in e.summary for e in errors)
    lines = sorted(e.location.line for e in errors if e.location is not None)
    # both places: the group that uses the SLA, and the SLA's own `sync:` line (the one to change)
    assert lines == sorted(
        [line_of(tmp_path / "protect.yaml", "sla: tier1"), line_of(tmp_path / "protect.yaml", "sync: every 5m")]
    )


def test_misspelled_data_source_is_one_error_not_a_cascade(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group()))
    policy = tmp_path / "protect.yaml"
    policy.write_text(policy.read_text().replace("filesystem:", "filesytem:"))
    errors = errors_of(tmp_path)
    assert [e.summary for e in errors] == ["unknown field `filesytem`"]
    assert "did you mean `filesystem`" in (errors[0].detail or "")


def test_full_less_often_than_weekly(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group(), sla_doc=sla(full="monthly on 1 at 02:00")))
    errors = [d for d in errors_of(tmp_path) if "full" in d.summary]
    assert errors and "less often than weekly" in errors[0].summary
    assert errors[0].location is not None
    assert errors[0].location.line == line_of(tmp_path / "protect.yaml", "full: monthly")


def test_snapshot_budget_exceeded(tmp_path: Path) -> None:
    # a daily full kept 90 days is 90 snapshots, over the default 64 per file source
    write_policy(tmp_path, base(group(), sla_doc=sla(disk="90d")))
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert "keeps 90 snapshots per source, over the budget of 64 per file source" in errors[0].summary


def test_snapshot_budget_raised_by_settings(tmp_path: Path) -> None:
    settings = (
        "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {name: settings}\nspec:\n  budgets: {fileSource: 100}\n"
    )
    write_policy(tmp_path, base(group(), settings, sla_doc=sla(disk="90d")))
    assert isinstance(load_policy(tmp_path), Policy)


def test_tape_retention_must_exceed_disk(tmp_path: Path) -> None:
    library = (
        "apiVersion: protectctl/v1\nkind: TapeLibrary\nmetadata: {name: lib1}\n"
        "spec: {path: ./tapes, encryption: {key: repo-key}}\n"
    )
    tape = "  tape: {library: lib1, pool: monthly, schedule: weekly on sun at 02:00, retention: 7d}\n"
    write_policy(tmp_path, base(group(), library, sla_doc=sla(extra=tape)))
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and "tape retention 7d is not longer than disk retention 14d" in errors[0].summary
    assert errors[0].location is not None
    assert errors[0].location.line == line_of(tmp_path / "protect.yaml", "tape: {library")
    write_policy(tmp_path, base(group(), library, sla_doc=sla(extra=tape.replace("7d}", "7y}"))))
    load_policy(tmp_path)


def test_shipped_tier_gold(tmp_path: Path) -> None:
    write_policy(tmp_path, [HOST, KEY, STORAGE, group(sla_name="gold")])
    policy = load_policy(tmp_path)
    gold = policy.get(Kind.SLA, "gold")
    assert gold is not None and gold.ref.shipped and isinstance(gold.spec, SLASpec)
    assert str(gold.spec.sync) == "every 15m"


def test_user_sla_overrides_shipped_tier(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group(sla_name="gold"), sla_doc=sla("gold", disk="7d")))
    gold = load_policy(tmp_path).get(Kind.SLA, "gold")
    assert gold is not None and not gold.ref.shipped


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    write_policy(tmp_path, QUICKSTART_TEXT.replace("metadata: {name: primary}", "metadata: {name: primary"))
    errors = errors_of(tmp_path)
    assert len(errors) == 1 and errors[0].summary.startswith("YAML syntax")
    assert errors[0].location is not None and errors[0].location.line > 1


def test_errors_in_several_files_all_reported(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group(sla_name="nope")))
    write_policy(tmp_path / "sub", "kind: [\n", name="broken.yaml")
    files = {d.location.file.name for d in errors_of(tmp_path) if d.location}
    assert files == {"protect.yaml", "broken.yaml"}


def test_hidden_and_state_dirs_are_skipped(tmp_path: Path) -> None:
    write_policy(tmp_path, base(group()))
    write_policy(tmp_path / ".protectctl", "not: [valid", name="junk.yaml")
    write_policy(tmp_path / ".git", "not: [valid", name="junk.yaml")
    load_policy(tmp_path)


# --- fuzz ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        [
            "15m",
            "14d",
            "every 15m",
            "daily at 20:00",
            "weekly on sun at 02:00",
            "100GB",
            "10%/day",
            "50Mbit",
            "local",
            "primary",
            "tier1",
            "gold",
            "protectctl/v1",
            "Host",
            "SLA",
            "ProtectionGroup",
            "* * * * *",
            "",
        ]
    ),
)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.text(max_size=12)
            | st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "members", "sla", "storage"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
KINDS = [k.value for k in Kind] + ["Nope"]
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _dump(docs: list[Any]) -> str:
    out = io.StringIO()
    YAML(typ="safe").dump_all(docs, out)
    return out.getvalue()


def _check_load(directory: Path, text: str | bytes) -> None:
    file = directory / "protect.yaml"
    file.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    lines = max(1, file.read_bytes().count(b"\n") + 1)
    try:
        result = load_policy(directory)
    except PolicyError as err:
        assert err.diagnostics, "a PolicyError without diagnostics"
        for d in err.diagnostics:
            assert d.location is not None, f"unlocated: {d}"
            assert d.location.file == file.resolve(), d
            assert 1 <= d.location.line <= lines + 1, d
            assert d.location.column >= 1, d
            assert str(d).startswith(f"{file.resolve()}:{d.location.line}:{d.location.column}: ")
        return
    assert isinstance(result, Policy)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_random_text(fuzz_dir: Path, text: str) -> None:
    _check_load(fuzz_dir, text)


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_random_bytes(fuzz_dir: Path, data: bytes) -> None:
    _check_load(fuzz_dir, data)


@FUZZ
@given(docs=st.lists(structures, min_size=1, max_size=3))
def test_fuzz_random_structures(fuzz_dir: Path, docs: list[Any]) -> None:
    _check_load(fuzz_dir, _dump(docs))


@FUZZ
@given(kind=st.sampled_from(KINDS), name=scalars, spec=structures)
def test_fuzz_random_specs(fuzz_dir: Path, kind: str, name: Any, spec: Any) -> None:
    _check_load(
        fuzz_dir,
        _dump([{"apiVersion": "protectctl/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}]),
    )


QUICKSTART_DOCS = list(YAML(typ="safe").load_all(QUICKSTART_TEXT))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


ALL_PATHS = [(i, p) for i, doc in enumerate(QUICKSTART_DOCS) for p in _paths(doc) if p]


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["set", "delete", "add"]), structures),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_quickstart(fuzz_dir: Path, edits: list[Any]) -> None:
    """Wrong types, missing and unknown fields anywhere in a valid policy."""
    docs = copy.deepcopy(QUICKSTART_DOCS)
    for (index, path), how, value in edits:
        parent: Any = docs[index]
        for key in path[:-1]:
            if not isinstance(parent, dict | list):
                break
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            last = path[-1]
            if isinstance(parent, dict):
                if how == "delete":
                    parent.pop(last, None)
                elif how == "add":
                    parent[f"{last}X"] = value
                else:
                    parent[last] = value
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                parent[last] = value
    _check_load(fuzz_dir, _dump(docs))


@FUZZ
@given(
    cuts=st.lists(
        st.tuples(
            st.integers(0, len(QUICKSTART_TEXT)),
            st.integers(0, 8),
            st.text(alphabet=":{}[]-,'\"\n #&*!|>%@`\t", max_size=4),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_malformed_yaml(fuzz_dir: Path, cuts: list[tuple[int, int, str]]) -> None:
    """The quick start with characters deleted and YAML punctuation inserted."""
    text = QUICKSTART_TEXT
    for at, length, insert in cuts:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + length :]
    assume(text != QUICKSTART_TEXT)
    _check_load(fuzz_dir, text)


def test_non_mapping_documents_located_at_their_start(tmp_path: Path) -> None:
    write_policy(tmp_path, [HOST, "just a string\n", "- a\n- list\n"])
    file = tmp_path / "protect.yaml"
    errors = errors_of(tmp_path)
    assert [(d.location.line, d.location.column) for d in errors if d.location] == [
        (line_of(file, "just a string"), 1),
        (line_of(file, "- a"), 1),
    ]


def test_flow_mapping_with_colon_in_plain_scalar(tmp_path: Path) -> None:
    # valid YAML 1.2 that libyaml refuses (the DESIGN's own tape example)
    library = (
        "apiVersion: protectctl/v1\nkind: TapeLibrary\nmetadata: {name: lib1}\n"
        "spec: {path: ./tapes, encryption: {key: repo-key}}\n"
    )
    tape = "  tape: {library: lib1, pool: monthly, schedule: weekly on sun at 02:00, retention: 7y, copyFrom: disk}\n"
    write_policy(tmp_path, base(group(), library, sla_doc=sla(extra=tape)))
    assert load_policy(tmp_path).get(Kind.SLA, "tier1") is not None


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 500 + "]" * 500 + "\n",
        "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: x}\nspec: " + "[" * 900 + "]" * 900 + "\n",
        "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: x}\nspec: " + "{a: " * 900 + "1" + "}" * 900 + "\n",
        "a: &x [1]\nb: *x\nc: *nope\n",
        "\ufeffapiVersion: protectctl/v1\n\x00\n",
    ],
    ids=["deep-lists", "deep-spec-list", "deep-spec-map", "bad-alias", "nul-byte"],
)
def test_pathological_yaml(tmp_path: Path, text: str) -> None:
    _check_load(tmp_path, text)


def test_local_storage_used_by_a_member_on_an_ssh_host_is_a_warning_with_its_position(tmp_path: Path) -> None:
    host = (
        "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: s1}\nspec:\n  address: 10.0.0.9\n"
        '  hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxqKSTM4mqUClowJzXBY6H4+n4Gru4x2Bi2DH/nsJ1C"\n'
    )
    quickstart = (QUICKSTART / "protect.yaml").read_text()
    assert "host: local" in quickstart
    policy = load_policy(write_policy(tmp_path, [host, quickstart.replace("host: local", "host: s1")]))
    (warning,) = [w for w in policy.warnings if "SSH host 's1'" in w.summary]
    assert warning.severity is Severity.WARNING and "local storage" in warning.summary
    assert warning.location is not None and "protect.yaml" in str(warning.location)
    assert not [w for w in load_policy(QUICKSTART).warnings if "SSH host" in w.summary]
