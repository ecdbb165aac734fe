"""Issue 6: a key that unexpired cartridges need cannot be lost by a plan, --delete-data or not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protectctl import api
from protectctl.errors import PlanError
from tests.conftest import REPO, cli_env, write_policy
from tests.integration.test_tape import POLICY, backup, write_data


def cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's CLI (not whatever `protectctl` is on PATH)."""
    env = cli_env({"PYTHONPATH": str(REPO)})
    return subprocess.run(
        [sys.executable, "-m", "protectctl", "-C", str(site), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _without(text: str, *needles: str) -> str:
    """The policy without the documents containing any of `needles` (and without the SLA's tape)."""
    docs = [d for d in text.split("---\n") if not any(n in d for n in needles)]
    return "---\n".join(docs).replace(
        "  tape: {library: lib1, pool: monthly, schedule: weekly on sun at 02:00, retention: 7y, copyFrom: disk}\n",
        "",
    )


@pytest.fixture
def taped(tmp_path: Path) -> tuple[Path, str]:
    policy_dir = write_policy(tmp_path / "site", POLICY.format(capacity="10MB"))
    write_data(policy_dir / "data", seed=1, big_files=0)
    api.apply(policy_dir, confirm=lambda _plan: True)
    api.tape_label(policy_dir, 1, "monthly")
    backup(policy_dir)
    (copied,) = api.run_tape(policy_dir, "docs", None).copied
    return policy_dir, copied.barcodes[0]


def test_destroy_and_removal_of_a_needed_key_are_refused(taped: tuple[Path, str]) -> None:
    site, barcode = taped
    for delete_data in (False, True):
        with pytest.raises(PlanError) as err:
            api.plan(site, destroy=True, delete_data=delete_data)
        assert "key.tape-kek" in err.value.message and barcode in err.value.message
        assert "expires 20" in err.value.message  # the expiry, seven years on

    # the key removed from the policy (with its library and the SLA's tape copy)
    policy = (site / "protect.yaml").read_text()
    write_policy(site, _without(POLICY.format(capacity="10MB"), "name: tape-kek", "kind: TapeLibrary"))
    for delete_data in (False, True):
        with pytest.raises(PlanError, match="key.tape-kek"):
            api.plan(site, delete_data=delete_data)
    proc = cli(site, "plan", "--delete-data")
    assert proc.returncode != 0 and barcode in proc.stderr and "Traceback" not in proc.stderr

    # the key's passphrase re-pointed: a replacement, refused the same way
    write_policy(site, policy.replace("./.protectctl/tape-passphrase", "./.protectctl/other-passphrase"))
    with pytest.raises(PlanError, match=r"key.tape-kek \(replace\)"):
        api.plan(site)
    write_policy(site, policy)
    assert api.plan(site).changes == []


def test_a_library_with_unexpired_cartridges_is_kept_unless_delete_data(taped: tuple[Path, str]) -> None:
    site, barcode = taped
    write_policy(site, _without(POLICY.format(capacity="10MB"), "kind: TapeLibrary"))
    (change,) = [c for c in api.plan(site).changes if c.address == "library.lib1"]
    assert change.action.value == "delete" and not change.delete_data
    assert any("cartridges kept" in n and barcode in n for n in change.notes)
    (change,) = [c for c in api.plan(site, delete_data=True).changes if c.address == "library.lib1"]
    assert change.delete_data and any("deleted with it" in n for n in change.notes)
    api.apply(site, confirm=lambda _plan: True)  # without --delete-data: the cartridges stay
    assert (site / ".protectctl/tape/lib1/cartridges" / barcode).is_dir()


def test_expired_cartridges_do_not_hold_the_key(taped: tuple[Path, str]) -> None:
    from datetime import UTC, datetime, timedelta

    site, _barcode = taped
    later = datetime.now(UTC) + timedelta(days=7 * 366)
    state = api.read_state(site)
    plan = api.make_plan(site, state, destroy=True, delete_data=True, now=later)
    assert any(c.address == "key.tape-kek" and c.action.value == "delete" for c in plan.changes)
