"""The GitOps examples cannot rot: every `protectctl ...` line of the GitHub Actions workflow
and of the GitLab CI pipeline runs, exactly as written, against a copy of examples/quickstart,
and its exit code is read the way the pipeline reads it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.conftest import EXAMPLES, PROTECTCTL, cli_env, copy_example

GITOPS = EXAMPLES / "gitops"
GITHUB = GITOPS / ".github" / "workflows" / "protectctl.yml"
GITLAB = GITOPS / ".gitlab-ci.yml"
DETAILED = "--detailed-exitcode"


@dataclass(frozen=True)
class Pipeline:
    """The protectctl lines a pipeline runs on a pull/merge request and on main."""

    review: tuple[str, ...]
    merge: tuple[str, ...]
    env: dict[str, str]


def protectctl_lines(script: Any) -> list[str]:
    """Lines of a run/script value (a string or a list of strings) that start with `protectctl `."""
    chunks = script if isinstance(script, list) else [script]
    return [
        line.strip()
        for chunk in chunks
        for line in str(chunk).splitlines()
        if line.strip().startswith("protectctl ")
    ]


def github_pipeline() -> Pipeline:
    doc = YAML(typ="safe").load(GITHUB.read_text())
    review: list[str] = []
    merge: list[str] = []
    for job in doc["jobs"].values():
        target = review if "pull_request" in job["if"] else merge
        assert "pull_request" in job["if"] or "refs/heads/main" in job["if"], job["if"]
        for step in job["steps"]:
            target += protectctl_lines(step.get("run", ""))
    return Pipeline(tuple(review), tuple(merge), {k: str(v) for k, v in doc["env"].items()})


def gitlab_pipeline() -> Pipeline:
    doc = YAML(typ="safe").load(GITLAB.read_text())
    review: list[str] = []
    merge: list[str] = []
    for name in doc["stages"]:  # jobs run stage by stage
        for job in (j for j in doc.values() if isinstance(j, dict) and j.get("stage") == name):
            lines = protectctl_lines(job.get("before_script", [])) + protectctl_lines(job["script"])
            rules = " ".join(rule["if"] for rule in job["rules"])
            if "merge_request_event" in rules:
                review += lines
            if "CI_DEFAULT_BRANCH" in rules:
                merge += lines
    return Pipeline(tuple(review), tuple(merge), {k: str(v) for k, v in doc["variables"].items()})


PIPELINES = {"github": github_pipeline, "gitlab": gitlab_pipeline}


def run_line(
    line: str, policy_dir: Path, workdir: Path, pipeline: Pipeline
) -> subprocess.CompletedProcess[str]:
    """One line, as the CI shell runs it (variables, quoting, redirections), with our protectctl."""
    env = cli_env({**pipeline.env, "POLICY_DIR": str(policy_dir)})
    if PROTECTCTL:
        env["PATH"] = f"{Path(PROTECTCTL).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def run_stage(
    lines: tuple[str, ...], policy_dir: Path, workdir: Path, pipeline: Pipeline, detailed: int = 0
) -> None:
    """Run the lines; `--detailed-exitcode` lines must exit `detailed`, the others 0."""
    for line in lines:
        proc = run_line(line, policy_dir, workdir, pipeline)
        want = detailed if DETAILED in line else 0
        assert proc.returncode == want, f"{line!r} exited {proc.returncode}, want {want}\n{proc.stderr}"


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_shape(name: str) -> None:
    pipeline = PIPELINES[name]()
    assert pipeline.env["POLICY_DIR"] == "examples/gitops/policy"
    assert any(re.fullmatch(r'protectctl -C "\$POLICY_DIR" validate', line) for line in pipeline.review)
    assert any(f"plan --format markdown {DETAILED}" in line for line in pipeline.review)
    # on main: a saved plan, then exactly that plan applied
    saved = [shlex.split(line) for line in pipeline.merge if " plan --out " in line]
    applied = [shlex.split(line) for line in pipeline.merge if " apply " in line]
    assert len(saved) == 1 and len(applied) == 1
    plan_file = saved[0][saved[0].index("--out") + 1]
    assert applied[0][-1] == plan_file and "--auto-approve" not in applied[0]
    assert pipeline.merge.index(
        " ".join(shlex.quote(a) if a != "$POLICY_DIR" else '"$POLICY_DIR"' for a in saved[0])
    ) < pipeline.merge.index(" ".join('"$POLICY_DIR"' if a == "$POLICY_DIR" else a for a in applied[0]))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_on_quickstart(name: str, quickstart: Path, tmp_path: Path) -> None:
    pipeline = PIPELINES[name]()
    workdir = tmp_path / "checkout"
    workdir.mkdir()

    # a pull request against an empty state: valid, with changes, posted as markdown
    run_stage(pipeline.review, quickstart, workdir, pipeline, detailed=2)
    comment = (workdir / "plan.md").read_text()
    assert (
        comment.startswith("### protectctl plan")
        and "**Plan: 10 to add, 0 to change, 0 to destroy.**" in comment
    )

    # merged: plan --out, apply that plan
    run_stage(pipeline.merge, quickstart, workdir, pipeline)
    assert (quickstart / ".protectctl" / "root" / "etc" / "protectctl" / "agent.yaml").exists()
    if name != "github":
        other = github_pipeline()
        if (other.review, other.merge) == (pipeline.review, pipeline.merge):
            return  # the very same lines: the github run below covers the rest (saves ~8 s)

    # the next pull request with nothing to change
    run_stage(pipeline.review, quickstart, workdir, pipeline, detailed=0)
    assert "**No changes.**" in (workdir / "plan.md").read_text()

    # a pull request changing the SLA: exactly the affected schedule in the comment
    policy = quickstart / "protect.yaml"
    policy.write_text(policy.read_text().replace("sync: every 15m", "sync: every 30m"))
    run_stage(pipeline.review, quickstart, workdir, pipeline, detailed=2)
    comment = (workdir / "plan.md").read_text()
    assert "`schedule.docs/home/sync`" in comment and "`schedule.docs/home/full`" not in comment

    # a pull request with a broken policy fails at validate
    policy.write_text(policy.read_text().replace("full: daily at 20:00", "full: fortnightly"))
    validate = next(line for line in pipeline.review if line.endswith(" validate"))
    proc = run_line(validate, quickstart, workdir, pipeline)
    assert proc.returncode == 1 and re.search(r"protect\.yaml:\d+:\d+: error: ", proc.stderr), proc.stderr


def test_saved_plan_refused_when_state_moved(quickstart: Path, tmp_path: Path) -> None:
    """Two merges racing: the first applies, the second's saved plan is refused (both pipelines
    run the same plan/apply lines, so one of them is enough)."""
    pipeline = github_pipeline()
    assert pipeline.merge[-2:] == gitlab_pipeline().merge[-2:]
    plan_line = next(line for line in pipeline.merge if " plan --out " in line)
    apply_line = next(line for line in pipeline.merge if " apply " in line)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for workdir in (first, second):  # both planned against the same (empty) state
        assert run_line(plan_line, quickstart, workdir, pipeline).returncode == 0
    assert run_line(apply_line, quickstart, first, pipeline).returncode == 0
    proc = run_line(apply_line, quickstart, second, pipeline)
    assert proc.returncode == 1 and "the saved plan belongs to another state" in proc.stderr
    # and once a state exists: a plan made before another apply is refused by serial
    policy = quickstart / "protect.yaml"
    policy.write_text(policy.read_text().replace("sync: every 15m", "sync: every 30m"))
    assert run_line(plan_line, quickstart, second, pipeline).returncode == 0
    assert (
        run_line(
            apply_line.replace("plan.json", str(first / "plan.json")), quickstart, first, pipeline
        ).returncode
        == 1
    )  # the first merge's plan is stale by now
    assert run_line(plan_line, quickstart, first, pipeline).returncode == 0
    assert run_line(apply_line, quickstart, first, pipeline).returncode == 0
    proc = run_line(apply_line, quickstart, second, pipeline)
    assert proc.returncode == 1 and "the state changed since this plan was made" in proc.stderr


def test_example_policy_keeps_state_where_settings_say(tmp_path: Path) -> None:
    """examples/gitops/policy validates and plans; its Settings put the state outside the checkout."""
    policy_dir = copy_example("gitops/policy", tmp_path / "policy")
    settings = policy_dir / "settings.yaml"
    assert "path: /var/lib/protectctl/gitops/state.json" in settings.read_text()
    state = tmp_path / "var" / "state.json"
    settings.write_text(settings.read_text().replace("/var/lib/protectctl/gitops/state.json", str(state)))
    pipeline = github_pipeline()
    run_stage(pipeline.review, policy_dir, tmp_path, pipeline, detailed=2)
    assert state.with_name("state.json.lock").exists()  # the plan locked the state where Settings say
    assert not (policy_dir / ".protectctl").exists()


def test_gitops_dir_itself_is_not_read_as_policy() -> None:
    """Pipeline files are YAML too; hidden files and directories are never policy."""
    from protectctl.policy.load import policy_files

    assert [p.relative_to(GITOPS).as_posix() for p in policy_files(GITOPS)] == [
        "policy/protect.yaml",
        "policy/settings.yaml",
    ]
