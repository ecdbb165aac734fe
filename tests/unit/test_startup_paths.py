"""What start-up leaves out must not change a result: the default Settings made without building
their validators, and a ProtectionGroup read with only the provider kinds it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from protectctl.errors import PolicyError, Severity
from protectctl.policy.load import load_policy
from protectctl.policy.model import Kind, SettingsSpec, default_settings, group_model, member_kinds
from protectctl.provider import builtin_kinds
from tests.conftest import QUICKSTART, copy_example, write_policy


def test_default_settings_are_the_models_defaults() -> None:
    made, validated = default_settings(), SettingsSpec()
    assert made == validated
    assert made.model_dump(mode="json") == validated.model_dump(mode="json")
    assert made.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True) == {}
    assert made.schedules.timeouts == validated.schedules.timeouts
    assert made.schedules.model_fields_set == validated.schedules.model_fields_set == set()


def test_a_group_is_read_with_the_kinds_it_names_and_its_errors_with_all(tmp_path: Path) -> None:
    spec = {"sla": "t", "storage": "s", "members": [{"name": "a", "host": "h", "filesystem": {"path": "/srv"}}]}
    assert member_kinds(spec, named=True) == ("filesystem",)
    assert member_kinds(spec) == builtin_kinds()
    policy = load_policy(copy_example("quickstart", tmp_path / "q"))
    (group,) = policy.of(Kind.PROTECTION_GROUP).values()
    assert type(group.spec) is group_model(("filesystem",))
    assert group.spec.members[0].provider == "filesystem"
    # a member with no data source: the error names every kind, as the full model says it
    text = (QUICKSTART / "protect.yaml").read_text()
    assert "      filesystem: {path: ./data" in text
    write_policy(tmp_path / "b", text.replace("      filesystem: {path: ./data", "      #"))
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "b")
    (error,) = [d for d in info.value.diagnostics if d.severity is Severity.ERROR]
    assert f"a member needs exactly one data source ({', '.join(builtin_kinds())}); found none" in error.summary


ODD_TEXTS = ["plain", "quote \" and 'single'", "back\\slash", "<tag> & amp", "line\nbreak\ttab", "é ü ß", "😀 emoji"]


def _source_inputs(text: str, number: object) -> dict[str, object]:
    return {
        "source": f"g/{text}",
        "host": "web-1",
        "group": "g",
        "member": text,
        "provider": "filesystem",
        "spec": {"path": f"/srv/{text}", "exclude": [text, "*.tmp"], "n": number, "deep": {"x": [None, True, False]}},
        "storage": {"name": "primary", "passphrase": {"file": "/etc/k"}, "path": "/r", "type": "local"},
        "retention": {"daily": 0, "keep_within_s": 1209600},
        "scripts": None,
        "throttle": {"rate_bps": number, "during": None},
        "sync_interval_s": 900,
        "full_interval_s": -1,
        "parallelism": 2,
    }


@pytest.mark.parametrize("number", [0, -7, 10**30, 1.5, -0.25, 1e-05, 1.5e20])
def test_own_config_lines_read_as_yaml_reads_them(number: object) -> None:
    """What apply writes is read without a YAML library, to the value ruamel (YAML 1.2) reads,
    or not at all (None: the YAML readers take it)."""
    from ruamel.yaml import YAML

    from protectctl.provision.config import read_own_lines, render_agent_config, render_source_config

    for text in ODD_TEXTS:
        rendered = render_source_config(_source_inputs(text, number))
        own = read_own_lines(rendered)
        assert own is None or own == YAML(typ="safe").load(rendered)
        if "😀" not in text and number != 1e-05:
            assert own is not None  # the common case takes the fast way
    agent = render_agent_config(
        {"host": "h", "root": "/", "state_dir": "/var/lib/p", "sources_dir": "/etc/p/s", "version": "0.1.0"}
    )
    assert read_own_lines(agent) == YAML(typ="safe").load(agent)


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\na: 2\n",  # a repeated key
        'a: {"b": 1, "b": 2}\n',
        "a: NaN\n",
        "a: [NaN]\n",
        "a: True\n",
        "a: 0755\n",
        "a: 1_000\n",
        "a: 1e5\n",
        "a: b # comment\n",
        "a:\n  b: 1\n",
        "---\na: 1\n",
        "a: 'single'\n",
        "a: ~\n",
        "a: .inf\n",
        "",
    ],
)
def test_anything_else_is_left_to_yaml_or_read_alike(text: str) -> None:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from protectctl.provision.config import read_own_lines

    own = read_own_lines(text)
    try:
        expected = YAML(typ="safe").load(text)
    except YAMLError:
        assert own is None  # e.g. a repeated key: the YAML reader's error is the one to show
        return
    assert own is None or own == expected
