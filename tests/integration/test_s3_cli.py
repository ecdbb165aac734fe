"""An s3 Storage end to end through the real CLI on a real SeaweedFS: apply, sync, points, restore,
check, prune; and what the server being killed mid-sync does."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

from tests.conftest import run_cli, write_policy
from tests.seaweed import ADMIN, Seaweed

ENV = {"S3_ADMIN_KEY": ADMIN[0], "S3_ADMIN_SECRET": ADMIN[1]}


HOME = "    - {name: home, host: local, filesystem: {path: ./data}}\n"


def s3_policy(
    directory: Path, endpoint: str, bucket: str, *, extra_storage: str = "", state: str = "", members: str = HOME
) -> Path:
    """A policy with one s3 Storage (prefix site-a/) and group docs of `members` (YAML list items)."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    return write_policy(
        directory,
        [
            "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: local}\n"
            "spec: {address: local, root: ./.protectctl/root}\n",
            "apiVersion: protectctl/v1\nkind: EncryptionKey\nmetadata: {name: repo-key}\n"
            "spec: {passphrase: {file: ./.protectctl/passphrase}}\n",
            "apiVersion: protectctl/v1\nkind: Storage\nmetadata: {name: objects}\nspec:\n  type: s3\n"
            f"  endpoint: {endpoint}\n  region: us-east-1\n  bucket: {bucket}\n  prefix: site-a/\n"
            "  credentials:\n    accessKeyId: {env: S3_ADMIN_KEY}\n    secretAccessKey: {env: S3_ADMIN_SECRET}\n"
            f"{extra_storage}  encryption: {{key: repo-key}}\n",
            "apiVersion: protectctl/v1\nkind: SLA\nmetadata: {name: tier1}\n"
            "spec: {sync: every 15m, full: daily at 20:00, retention: {disk: 14d}}\n",
            "apiVersion: protectctl/v1\nkind: ProtectionGroup\nmetadata: {name: docs}\n"
            f"spec:\n  sla: tier1\n  storage: objects\n  members:\n{members}",
            *([state] if state else []),
        ],
    )


def fill(data: Path, seed: int, files: int = 12, size: int = 150_000) -> None:
    for i in range(files):
        (data / f"f{i}.bin").write_bytes(os.urandom(size) if i % 3 else bytes([seed]) * size)
    (data / "sub").mkdir(exist_ok=True)
    (data / "sub" / "note.txt").write_text(f"version {seed}\n")


def test_sync_restore_check_prune_on_seaweedfs(seaweed: Seaweed, tmp_path: Path) -> None:
    bucket = seaweed.new_bucket()
    policy = s3_policy(tmp_path / "p", seaweed.endpoint, bucket)
    plan = run_cli(policy, "plan", env=ENV)
    assert "s3://" + bucket in plan.stdout
    run_cli(policy, "apply", "--auto-approve", env=ENV)
    fill(policy / "data", 1)
    run_cli(policy, "run", "sync", "docs", env=ENV)
    fill(policy / "data", 2, files=3)
    run_cli(policy, "run", "sync", "docs", env=ENV)
    points = json.loads(run_cli(policy, "--json", "points", "list", env=ENV).stdout)
    assert len(points["points"]) == 2
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert all(k.startswith("site-a/") for k in keys) and any(k.startswith("site-a/data/") for k in keys)
    target = tmp_path / "restored"
    run_cli(policy, "restore", "docs/home", "--to-time", "latest", "--target", str(target), env=ENV)
    diff = filecmp.dircmp(policy / "data", target)
    assert not diff.diff_files and not diff.left_only and not diff.right_only
    run_cli(policy, "check", "objects", "--read-data", env=ENV)
    run_cli(policy, "prune", "docs", env=ENV)
    secrets = json.dumps(json.loads((policy / ".protectctl" / "state.json").read_text()))
    assert ADMIN[1] not in secrets and ADMIN[1] not in plan.stdout


def test_missing_credentials_are_named_not_a_traceback(seaweed: Seaweed, tmp_path: Path) -> None:
    policy = s3_policy(tmp_path / "p", seaweed.endpoint, seaweed.new_bucket())
    proc = run_cli(policy, "apply", "--auto-approve", expect=1, env={"S3_ADMIN_KEY": ADMIN[0]})
    assert "S3_ADMIN_SECRET" in proc.stderr


SETTINGS = (
    "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {{name: settings}}\n"
    "spec:\n  state: {{backend: {backend}, storage: {storage}, key: state/prod.json}}\n"
)


def test_state_migrates_to_s3_with_its_lineage_and_an_unreachable_backend_is_never_bypassed(
    seaweed: Seaweed, tmp_path: Path
) -> None:
    bucket = seaweed.new_bucket()
    policy = s3_policy(
        tmp_path / "p", seaweed.endpoint, bucket, state=SETTINGS.format(backend="local", storage="objects")
    )
    run_cli(policy, "apply", "--auto-approve", env=ENV)
    local = json.loads((policy / ".protectctl" / "state.json").read_text())
    moved = json.loads(run_cli(policy, "state", "migrate", "--to", "s3", "--json", env=ENV).stdout)
    assert moved["lineage"] == local["lineage"] and moved["serial"] == local["serial"]
    text = (policy / "protect.yaml").read_text().replace("backend: local", "backend: s3")
    (policy / "protect.yaml").write_text(text)
    assert "No changes" in run_cli(policy, "plan", env=ENV).stdout
    stored = seaweed.client().get_object(Bucket=bucket, Key="site-a/state/prod.json")["Body"].read()
    assert json.loads(stored)["lineage"] == local["lineage"]
    # the state backend unreachable: a clear error, never the local file read instead
    dead = text.replace(seaweed.endpoint, "http://127.0.0.1:9")
    (policy / "protect.yaml").write_text(dead)
    proc = run_cli(policy, "plan", expect=1, env=ENV)
    assert "state backend s3:" in proc.stderr and "Could not connect" in proc.stderr


def test_plan_shows_the_lock_and_apply_refuses_a_bucket_that_cannot_lock(seaweed: Seaweed, tmp_path: Path) -> None:
    policy = s3_policy(
        tmp_path / "p", seaweed.endpoint, seaweed.new_bucket(), extra_storage="  objectLock: {mode: compliance}\n"
    )
    plan = run_cli(policy, "plan", env=ENV)
    assert "object lock compliance" in plan.stdout + plan.stderr and "14d" in plan.stdout + plan.stderr
    proc = run_cli(policy, "apply", "--auto-approve", expect=1, env=ENV)
    assert "does not have object lock enabled" in proc.stdout + proc.stderr
