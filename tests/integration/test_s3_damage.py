"""`check --read-data` names the damaged point (issue 14, item 3): one pack object in the bucket
is overwritten with a flipped bit; check exits 1 and names exactly the point that needs it, as
`id (group/member at time)` in text and in the `affected` list of its JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from tests.conftest import run_cli
from tests.integration.test_s3_cli import ENV, fill, s3_policy
from tests.seaweed import Seaweed


def _data_keys(seaweed: Seaweed, bucket: str) -> set[str]:
    pages = seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="site-a/data/")
    return {o["Key"] for page in pages for o in page.get("Contents", ())}


def test_check_read_data_names_the_point_a_damaged_object_hurts(seaweed: Seaweed, tmp_path: Path) -> None:
    bucket = seaweed.new_bucket()
    policy = s3_policy(tmp_path / "p", seaweed.endpoint, bucket)
    run_cli(policy, "apply", "--auto-approve", env=ENV)
    fill(policy / "data", 1, files=4)
    (first,) = json.loads(run_cli(policy, "--json", "run", "sync", "docs", env=ENV).stdout)["results"]
    before = _data_keys(seaweed, bucket)
    (policy / "data" / "late.bin").write_bytes(bytes(range(256)) * 2000)
    (second,) = json.loads(run_cli(policy, "--json", "run", "sync", "docs", env=ENV).stdout)["results"]
    key = sorted(_data_keys(seaweed, bucket) - before)[0]  # a pack only the second point needs
    client = seaweed.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0x10
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    doc = json.loads(run_cli(policy, "--json", "check", "objects", "--read-data", expect=1, env=ENV).stdout)
    assert not doc["ok"] and doc["affected_points"] == [second["point_id"]]  # not the first point
    (affected,) = doc["affected"]
    assert affected["id"] == second["point_id"] and affected["source"] == "docs/home"
    assert key.rsplit("/", 1)[-1] in doc["damaged_packs"]

    text = run_cli(policy, "check", "objects", "--read-data", expect=1, env=ENV).stdout
    when = datetime.fromisoformat(affected["time"]).strftime("%Y-%m-%d %H:%M:%SZ")
    assert f"{second['point_id']} (docs/home at {when})" in text
    assert first["point_id"] not in text
