"""schemas/ is generated from the models: it must equal `protectctl schema` output.

Regenerate with `protectctl schema --out schemas/` after changing protectctl/policy/model.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from protectctl.policy.model import Kind
from tests.conftest import REPO, run_cli

SCHEMAS = REPO / "schemas"
HINT = "schemas/ is stale: run `protectctl schema --out schemas/` and commit the result"


def test_schemas_dir_matches_cli_output(tmp_path: Path) -> None:
    run_cli(None, "schema", "--out", str(tmp_path))
    generated = {p.name: p.read_text() for p in sorted(tmp_path.glob("*.json"))}
    checked_in = {p.name: p.read_text() for p in sorted(SCHEMAS.glob("*.json"))}
    assert sorted(generated) == sorted(checked_in), HINT
    for name, text in generated.items():
        assert checked_in[name] == text, f"{name}: {HINT}"


def test_schema_stdout_matches_files() -> None:
    doc = json.loads(run_cli(None, "schema").stdout)
    assert sorted(doc) == sorted(k.value.lower() for k in Kind)
    for name, schema in doc.items():
        assert json.loads((SCHEMAS / f"{name}.json").read_text()) == schema, HINT


def test_schemas_describe_the_contract() -> None:
    group = json.loads((SCHEMAS / "protectiongroup.json").read_text())
    assert group["$id"].endswith("/protectiongroup.json")
    assert group["additionalProperties"] is False
    spec = group["$defs"]["ProtectionGroupSpec"]["properties"]
    assert {"sla", "storage", "sizeHint", "changeRate", "scripts", "throttle", "members"} <= set(spec)
    sla = json.loads((SCHEMAS / "sla.json").read_text())["$defs"]["SLASpec"]["properties"]
    assert {"sync", "full", "retention", "tape"} <= set(sla)
