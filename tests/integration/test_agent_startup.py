"""The fixed cost of a timer-started sync, guarded without timing: what the agent path imports,
and that scrypt runs once per key file, not once per run (engine/keycache.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, run_cli
from tests.integration.test_schedules_run import PASSPHRASE_ENV, POLICY

# What a filesystem sync run from the agent config must not load: the policy models and
# pydantic (~0.4 s), ruamel (the configs are read by the libyaml fast path), apply and plan
# code, and the s3 client (only an s3 storage needs it); nor typer and rich: the timer's command
# line is read without them (cli/timer.py), nor PyYAML: the configs are read as the lines apply
# writes (provision/config.py read_own_lines).
HEAVY_PACKAGES = {"pydantic", "pydantic_core", "ruamel", "boto3", "botocore", "jinja2", "networkx", "fabric"}
HEAVY_PACKAGES |= {"typer", "click", "rich", "asyncio", "yaml"}
HEAVY_MODULES = {"protectctl.policy.model", "protectctl.policy.load", "protectctl.apply.effects", "protectctl.plan"}

PROBE = """
import json, sys
from protectctl.engine import crypto
calls = []
real = crypto.KdfParams.derive
def counting(self, passphrase):
    calls.append(1)
    return real(self, passphrase)
crypto.KdfParams.derive = counting
sys.argv = ["protectctl", *sys.argv[1:]]
from protectctl.cli import main
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "kdf": len(calls), "modules": sorted(sys.modules)}))
"""


def _run(agent_config: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "--agent-config", str(agent_config), "run", "sync", "docs", "--member", "home"],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    assert result["code"] == 0, proc.stdout + proc.stderr
    return result


def test_agent_sync_loads_no_policy_code_and_derives_the_key_once(tmp_path: Path) -> None:
    directory = tmp_path / "policy"
    (directory / "data").mkdir(parents=True)
    (directory / "data" / "file.txt").write_text("protect me\n")
    (directory / "protect.yaml").write_text(POLICY.format(scheduler="cron", env=PASSPHRASE_ENV))
    run_cli(directory, "apply", "--auto-approve", env={PASSPHRASE_ENV: "correct horse battery"})
    agent_config = directory / "root" / "etc" / "protectctl" / "agent.yaml"
    state_dir = directory / "root" / "var" / "lib" / "protectctl"

    first = _run(agent_config)
    modules = set(first["modules"])  # type: ignore[arg-type]
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_PACKAGES or m in HEAVY_MODULES)
    assert heavy == [], f"the agent's sync path imported {heavy}"
    assert first["kdf"] == 1
    cache = state_dir / "keys" / "k.passphrase.kdf-cache"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert b"correct horse" not in cache.read_bytes()

    assert _run(agent_config)["kdf"] == 0  # the next run opens the repository without scrypt

    cache.write_bytes(b"damaged")  # a bad cache only costs the KDF again
    assert _run(agent_config)["kdf"] == 1

    # the points are the same as ever: three syncs, all readable with the passphrase alone
    listing = run_cli(directory, "points", "list", "--json", env={PASSPHRASE_ENV: "correct horse battery"})
    assert len(json.loads(listing.stdout)["points"]) == 3
