"""What plan puts in schedule resources: sandbox per job, timeouts, delays, the passphrase copy
for an `env:` key, and the installed agent when the local host's timers are live (root /).

Pure: a copy of examples/quickstart, edited, planned in-process.
"""

from __future__ import annotations

from pathlib import Path

from protectctl import api
from protectctl.plan.resources import Resource

QUICKSTART_KEY = "passphrase: {file: ./.protectctl/passphrase}"


def edit(directory: Path, old: str, new: str) -> None:
    file = directory / "protect.yaml"
    text = file.read_text()
    assert old in text, old
    file.write_text(text.replace(old, new))


def by_address(directory: Path) -> dict[str, Resource]:
    return {str(r.address): r for r in api.resources(api.load(directory))}


def test_every_job_kind_has_a_timeout_and_a_randomized_delay(quickstart: Path) -> None:
    res = by_address(quickstart)
    timeouts = {job: res[f"schedule.docs/home/{job}"].inputs["timeout_s"] for job in ("sync", "full", "prune")}
    assert timeouts == {"sync": 6 * 3600, "full": 86400, "prune": 6 * 3600}
    assert {res[f"schedule.docs/home/{job}"].inputs["randomized_delay_s"] for job in ("prune", "verify")} == {120}


def test_file_jobs_are_confined_to_their_writes(quickstart: Path) -> None:
    res = by_address(quickstart)
    sandbox = res["schedule.docs/home/sync"].inputs["sandbox"]
    assert isinstance(sandbox, dict)
    root = str(quickstart / ".protectctl" / "root")
    assert sandbox["write_paths"] == [
        f"{root}/var/lib/protectctl",
        f"{root}/var/lib/prometheus/node-exporter",
        str(quickstart / ".protectctl" / "repo"),
    ]
    assert sandbox["capabilities"] == ["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"]


def test_scripts_loosen_the_sandbox_of_backups_only(quickstart: Path) -> None:
    edit(quickstart, "  storage: primary\n", "  storage: primary\n  scripts: {pre: /usr/local/bin/quiesce}\n")
    res = by_address(quickstart)
    sync = res["schedule.docs/home/sync"].inputs["sandbox"]
    prune = res["schedule.docs/home/prune"].inputs["sandbox"]
    assert isinstance(sync, dict) and isinstance(prune, dict)
    assert sync["write_paths"] is None and sync["capabilities"] is None and sync["devices"]
    assert prune["write_paths"] and prune["capabilities"]


def test_settings_reach_every_schedule(quickstart: Path) -> None:
    (quickstart / "settings.yaml").write_text(
        "apiVersion: protectctl/v1\nkind: Settings\nmetadata: {name: settings}\nspec:\n"
        "  schedules: {onFailure: 'notify@%n.service', mailto: '', acPower: true, inhibit: true,"
        " timeouts: {sync: 30m}}\n"
    )
    inputs = by_address(quickstart)["schedule.docs/home/sync"].inputs
    assert (inputs["on_failure"], inputs["mailto"], inputs["ac_power"], inputs["inhibit"], inputs["timeout_s"]) == (
        "notify@%n.service",
        "",
        True,
        True,
        1800,
    )


def test_an_env_passphrase_gets_a_root_only_copy_for_local_timers(quickstart: Path) -> None:
    edit(quickstart, QUICKSTART_KEY, "passphrase: {env: REPO_PASSPHRASE}")
    res = by_address(quickstart)
    secret = res["secret.repo-key/local"]
    assert secret.inputs["path"] == str(quickstart / ".protectctl/root/etc/protectctl/keys/repo-key.passphrase")
    assert res["source.docs/home"].inputs["storage"]["passphrase"] == {"file": secret.inputs["path"]}  # type: ignore[index]
    assert "REPO_PASSPHRASE" not in str(res["schedule.docs/home/sync"].inputs)


def test_a_file_passphrase_is_read_where_it_is(quickstart: Path) -> None:
    assert not [a for a in by_address(quickstart) if a.startswith("secret.")]


def test_a_live_local_host_runs_an_installed_agent_not_this_venv(quickstart: Path) -> None:
    edit(quickstart, "root: ./.protectctl/root", "root: /")
    res = by_address(quickstart)
    assert res["agent.local"].inputs["install"]["venv"] == "/opt/protectctl"  # type: ignore[index]
    assert res["schedule.docs/home/sync"].inputs["argv"][0] == "/opt/protectctl/bin/protectctl"  # type: ignore[index]
