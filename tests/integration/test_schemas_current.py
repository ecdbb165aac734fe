"""schemas/ is generated from the models: it must equal `protectctl schema` output.

Regenerate with `protectctl schema --out schemas/` after changing protectctl/policy/model.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


def _documents_as_json(files: list[Path], out: Path) -> list[Path]:
    """check-jsonschema reads one document per file: each YAML document becomes a JSON file."""
    from ruamel.yaml import YAML

    paths = []
    for file in files:
        for i, doc in enumerate(d for d in YAML(typ="safe").load_all(file.read_text()) if d):
            path = out / f"{file.parent.name}-{file.stem}-{i}.json"
            path.write_text(json.dumps(doc))
            paths.append(path)
    return paths


def test_combined_schema_validates_every_shipped_document_with_check_jsonschema(tmp_path: Path) -> None:
    """The ecosystem's own validator (check-jsonschema, an ECMA-262 regex engine) on the one schema
    editors use for multi-document files: every example and shipped tier passes; `every fortnight`
    is refused where the policy says it."""
    files = [
        REPO / "examples/quickstart/protect.yaml",
        REPO / "policies/tiers.yaml",
        *sorted((REPO / "examples/gitops/policy").glob("*.yaml")),
    ]
    docs = _documents_as_json(files, tmp_path)
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMAS / "protectctl.json"), *map(str, docs)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    bad = tmp_path / "bad.json"
    sla = json.loads(next(p for p in docs if '"SLA"' in p.read_text()).read_text())
    sla["spec"]["full"] = "every fortnight"
    bad.write_text(json.dumps(sla))
    check = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SCHEMAS / "protectctl.json"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and "every fortnight" in check.stdout + check.stderr
