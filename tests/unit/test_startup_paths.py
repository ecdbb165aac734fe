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
