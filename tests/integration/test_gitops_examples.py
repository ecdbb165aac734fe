"""The GitOps examples cannot rot: every `protectctl ...` line of the GitHub Actions workflow
and of the GitLab CI pipeline runs, exactly as written, against a copy of examples/quickstart,
and its exit code is read the way the pipeline reads it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
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
    """The protectctl lines a pipeline runs on a pull/merge request, on a merge to main, and by hand."""

    review: tuple[str, ...]
    merge: tuple[str, ...]
    replan: tuple[str, ...]
    env: dict[str, str]


def protectctl_lines(script: Any) -> list[str]:
    """Lines of a run/script value (a string or a list of strings) that start with `protectctl `."""
    chunks = script if isinstance(script, list) else [script]
    return [
        line.strip() for chunk in chunks for line in str(chunk).splitlines() if line.strip().startswith("protectctl ")
    ]


def github_workflow() -> dict[str, Any]:
    doc: dict[str, Any] = YAML(typ="safe").load(GITHUB.read_text())
    return doc


def github_pipeline() -> Pipeline:
    doc = github_workflow()
    lines: dict[str, list[str]] = {"review": [], "merge": [], "replan": []}
    for job in doc["jobs"].values():
        when = job["if"]
        stage = (
            "review"
            if "pull_request" in when
            else "replan"
            if "workflow_dispatch" in when
            else "merge"
            if "'push'" in when and "refs/heads/main" in when
            else None
        )
        assert stage is not None, when
        for step in job["steps"]:
            lines[stage] += protectctl_lines(step.get("run", ""))
    return Pipeline(
        tuple(lines["review"]),
        tuple(lines["merge"]),
        tuple(lines["replan"]),
        {k: str(v) for k, v in doc["env"].items()},
    )


def gitlab_pipeline() -> Pipeline:
    doc = YAML(typ="safe").load(GITLAB.read_text())
    lines: dict[str, list[str]] = {"review": [], "merge": [], "replan": []}
    for name in doc["stages"]:  # jobs run stage by stage
        for job in (j for j in doc.values() if isinstance(j, dict) and j.get("stage") == name):
            found = protectctl_lines(job.get("before_script", [])) + protectctl_lines(job["script"])
            rules = " ".join(rule["if"] for rule in job["rules"])
            if "merge_request_event" in rules:
                lines["review"] += found
            if '"push"' in rules:
                lines["merge"] += found
            if '"web"' in rules:
                lines["replan"] += found
    return Pipeline(
        tuple(lines["review"]),
        tuple(lines["merge"]),
        tuple(lines["replan"]),
        {k: str(v) for k, v in doc["variables"].items()},
    )


PIPELINES = {"github": github_pipeline, "gitlab": gitlab_pipeline}


def run_line(line: str, policy_dir: Path, workdir: Path, pipeline: Pipeline) -> subprocess.CompletedProcess[str]:
    """One line, as the CI shell runs it (variables, quoting, redirections), with our protectctl."""
    env = cli_env({**pipeline.env, "POLICY_DIR": str(policy_dir)})
    if PROTECTCTL:
        env["PATH"] = f"{Path(PROTECTCTL).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-c", line], cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def run_stage(lines: tuple[str, ...], policy_dir: Path, workdir: Path, pipeline: Pipeline, detailed: int = 0) -> None:
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
    # the review saves the very plan it shows
    (review_plan,) = [shlex.split(line) for line in pipeline.review if " plan " in line]
    assert review_plan[review_plan.index("--out") + 1] == "plan.json"
    assert "markdown" in review_plan and DETAILED in review_plan
    # a merge applies that saved plan and never plans again
    assert not any(" plan " in line for line in pipeline.merge)
    (applied,) = [shlex.split(line) for line in pipeline.merge if " apply " in line]
    assert applied[-1] == "plan.json" and "--auto-approve" not in applied
    # by hand: plan, then apply exactly that plan
    assert [shlex.split(line)[3] for line in pipeline.replan] == ["plan", "apply"]


def test_github_actions_pinned_by_sha_one_comment_and_concurrency_per_pull_request() -> None:
    doc = github_workflow()
    uses = [step["uses"] for job in doc["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u in uses), uses
    plan_job = doc["jobs"]["plan"]
    assert "pull_request.number" in plan_job["concurrency"]["group"]
    assert all(
        job["concurrency"]["cancel-in-progress"] is False for name, job in doc["jobs"].items() if name != "plan"
    )  # never cancel an apply
    script = next(s["with"]["script"] for s in plan_job["steps"] if "github-script" in s.get("uses", ""))
    assert "updateComment" in script and "<!-- protectctl-plan -->" in script


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_on_quickstart(name: str, quickstart: Path, tmp_path: Path) -> None:
    pipeline = PIPELINES[name]()
    workdir = tmp_path / "checkout"
    workdir.mkdir()

    # a pull request against an empty state: valid, with changes, posted as markdown, plan saved
    run_stage(pipeline.review, quickstart, workdir, pipeline, detailed=2)
    comment = (workdir / "plan.md").read_text()
    assert comment.startswith("### protectctl plan") and "**Plan: 10 to add, 0 to change, 0 to destroy.**" in comment
    assert (workdir / "plan.json").exists()

    # merged: the reviewed plan (the artifact, here the same directory) is applied as it is
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


def test_reviewed_plan_refused_when_another_merge_applied_first(quickstart: Path, tmp_path: Path) -> None:
    """Two pull requests reviewed against the same state: the first merge applies its plan, the
    second's reviewed plan is refused (the state moved), and the by-hand re-plan applies main."""
    pipeline = github_pipeline()
    assert pipeline.merge == gitlab_pipeline().merge and pipeline.replan == gitlab_pipeline().replan
    review = next(line for line in pipeline.review if " plan " in line)
    apply_line = next(line for line in pipeline.merge if " apply " in line)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for workdir in (first, second):  # both reviewed against the same (empty) state
        assert run_line(review, quickstart, workdir, pipeline).returncode == 2
    assert run_line(apply_line, quickstart, first, pipeline).returncode == 0
    proc = run_line(apply_line, quickstart, second, pipeline)
    assert proc.returncode == 1 and "the saved plan belongs to another state" in proc.stderr
    # once a state exists: a plan reviewed before another merge applied is refused by serial
    policy = quickstart / "protect.yaml"
    policy.write_text(policy.read_text().replace("sync: every 15m", "sync: every 30m"))
    for workdir in (first, second):
        assert run_line(review, quickstart, workdir, pipeline).returncode == 2
    assert run_line(apply_line, quickstart, first, pipeline).returncode == 0
    proc = run_line(apply_line, quickstart, second, pipeline)
    assert proc.returncode == 1 and "the state changed since this plan was made" in proc.stderr
    # the way out: re-plan main by hand and apply that
    policy.write_text(policy.read_text().replace("sync: every 30m", "sync: every 20m"))
    run_stage(pipeline.replan, quickstart, second, pipeline)
    assert run_line(review, quickstart, second, pipeline).returncode == 0  # nothing left to do


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    return proc.stdout


def _step_script(job: str, step_name: str) -> str:
    job_doc = github_workflow()["jobs"][job]
    return str(next(s["run"] for s in job_doc["steps"] if s.get("name") == step_name))


def test_github_merge_applies_only_the_policy_tree_that_was_planned(tmp_path: Path) -> None:
    """The plan and apply steps' whole scripts, in a real git checkout: the apply step refuses when
    main's policy is not the tree the pull request planned."""
    repo = tmp_path / "repo"
    policy = copy_example("quickstart", repo / "examples" / "gitops" / "policy")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "policy")
    pipeline = github_pipeline()
    env = cli_env({**pipeline.env, "GITHUB_OUTPUT": str(tmp_path / "out")})
    if PROTECTCTL:
        env["PATH"] = f"{Path(PROTECTCTL).parent}{os.pathsep}{env.get('PATH', '')}"

    def step(job: str, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-e", "-c", _step_script(job, name)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    planned = step("plan", "Plan")
    assert planned.returncode == 0, planned.stderr
    planned_tree = _git(repo, "rev-parse", "HEAD:examples/gitops/policy").strip()
    assert (repo / "policy-tree.txt").read_text().strip() == planned_tree
    assert "exitcode=2" in (tmp_path / "out").read_text()
    # main moved on without a new plan: refused, nothing applied
    (policy / "protect.yaml").write_text((policy / "protect.yaml").read_text().replace("every 15m", "every 30m"))
    _git(repo, "commit", "-q", "-am", "unreviewed")
    refused = step("apply", "Apply exactly the reviewed plan")
    assert refused.returncode == 1 and "not the one the pull request planned" in refused.stderr
    assert not (policy / ".protectctl" / "state.json").exists()
    # main is the planned tree: applied
    _git(repo, "revert", "--no-edit", "HEAD")
    applied = step("apply", "Apply exactly the reviewed plan")
    assert applied.returncode == 0, applied.stderr
    assert (policy / ".protectctl" / "state.json").exists()


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


def _shell_scripts() -> list[tuple[str, str]]:
    out = [
        (f"github {job}/{step.get('name', '?')}", str(step["run"]))
        for job, doc in github_workflow()["jobs"].items()
        for step in doc["steps"]
        if "run" in step
    ]
    gitlab = YAML(typ="safe").load(GITLAB.read_text())
    for job, doc in gitlab.items():
        if isinstance(doc, dict) and "script" in doc:
            out += [(f"gitlab {job}[{i}]", str(chunk)) for i, chunk in enumerate(doc["script"])]
    return out


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt: shellcheck)")
@pytest.mark.parametrize(("where", "script"), [pytest.param(w, s, id=w.replace(" ", "-")) for w, s in _shell_scripts()])
def test_pipeline_scripts_pass_shellcheck(where: str, script: str) -> None:
    proc = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{where}:\n{proc.stdout}"
