"""Settings `parallelism` caps a backup job's compression threads: it reaches the source's inputs
(only when set, so a policy without it plans exactly as before) and the job built from them."""

from __future__ import annotations

from pathlib import Path

import yaml

from protectctl import api
from protectctl.plan.resources import Resource
from protectctl.provision.config import render_source_config


def _sources(directory: Path) -> dict[str, Resource]:
    return {str(r.address): r for r in api.resources(api.load(directory)) if str(r.address).startswith("source.")}


def test_parallelism_reaches_the_job_only_when_set(quickstart: Path, tmp_path: Path) -> None:
    before = _sources(quickstart)
    assert before and all("parallelism" not in r.inputs for r in before.values())
    (quickstart / "settings.yaml").write_text(
        "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {name: settings}\nspec:\n  parallelism: 2\n"
    )
    after = _sources(quickstart)
    assert {r.inputs["parallelism"] for r in after.values()} == {2}
    resource = next(iter(after.values()))
    job = api.source_job(api.SourceTarget(dict(resource.inputs), tmp_path / "state", "local"))
    assert job.parallelism == 2
    job = api.source_job(api.SourceTarget(dict(next(iter(before.values())).inputs), tmp_path / "state", "local"))
    assert job.parallelism is None
    # the agent's source config carries it too (what timers run), and only when set
    rendered = yaml.safe_load(render_source_config(dict(resource.inputs)))
    assert rendered["parallelism"] == 2
    assert "parallelism" not in yaml.safe_load(render_source_config(dict(next(iter(before.values())).inputs)))
