"""Issue 6: the repository master key under the same `keys` commands as tape keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protectctl import api
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import WrongKeyError
from tests.conftest import write_policy
from tests.integration.test_tape import POLICY, backup, write_data
from tests.integration.test_tape_guard import cli


@pytest.fixture
def site(tmp_path: Path) -> Path:
    policy_dir = write_policy(tmp_path / "site", POLICY.format(capacity="10MB"))
    write_data(policy_dir / "data", seed=1, big_files=0)
    api.apply(policy_dir, confirm=lambda _plan: True)
    return policy_dir


def _repo_passphrase(site: Path) -> Path:
    return site / ".protectctl/passphrase"


def _opens(site: Path, passphrase: bytes) -> bool:
    try:
        with Repository.open(LocalStorage(site / ".protectctl/repo"), passphrase):
            return True
    except WrongKeyError:
        return False


def test_list_warn_export_import_rotate_repository_keys(site: Path, tmp_path: Path) -> None:
    (row,) = [r for r in api.keys_list(site) if r["kind"] == "repository"]
    assert row["storage"] == "primary" and row["name"] == "repo-key" and row["exported"] is None
    assert str(row["passphrase"]).startswith("file ") and row["created"]
    assert not any("repository key" in w for w in api.plan(site).warnings)  # no points yet: nothing at risk
    backup(site)
    assert any("repository key" in w and "never exported" in w for w in api.plan(site).warnings)
    listed = cli(site, "keys", "list")
    assert listed.returncode == 0 and "repository" in listed.stdout and "primary" in listed.stdout

    old = _repo_passphrase(site).read_bytes().strip()
    (tmp_path / "export-pass").write_bytes(b"export secret\n")
    assert api.keys_export(site, "primary", tmp_path / "repo.key", passphrase_file=tmp_path / "export-pass") == [
        row["id"]
    ]
    assert not any("repository key" in w for w in api.plan(site).warnings)
    exported = (tmp_path / "repo.key").read_text()
    assert json.loads(exported)["repository"] and old.decode() not in exported
    # the raw master key is nowhere in the export (it is only in sealed form)
    assert '"encryption"' not in exported

    # another passphrase at this "site": the import adds a key file the new passphrase opens
    _repo_passphrase(site).write_bytes(b"a new passphrase\n")
    assert not _opens(site, b"a new passphrase")
    added = api.keys_import(site, tmp_path / "repo.key", passphrase_file=tmp_path / "export-pass")
    assert len(added) == 1 and _opens(site, b"a new passphrase")

    # rotate: the passphrase changes again; the master key is re-wrapped, the old files go
    (tmp_path / "old-pass").write_bytes(b"a new passphrase\n")
    _repo_passphrase(site).write_bytes(b"the third passphrase\n")
    proc = cli(site, "keys", "rotate", "repo-key", "--old-passphrase-file", str(tmp_path / "old-pass"))
    assert proc.returncode == 0, proc.stderr
    assert "repository primary: new key file" in proc.stdout
    assert _opens(site, b"the third passphrase") and not _opens(site, b"a new passphrase")
    backup(site)  # the same repository, same data, new passphrase
    with Repository.open(LocalStorage(site / ".protectctl/repo"), b"the third passphrase") as repo:
        assert len(repo.list_points()) == 2


def test_tape_key_passphrase_change_rewraps_old_keys(site: Path, tmp_path: Path) -> None:
    api.tape_label(site, 1, "monthly")
    backup(site)
    api.run_tape(site, "docs", None)
    tape_pass = site / ".protectctl/tape-passphrase"
    (tmp_path / "old").write_bytes(tape_pass.read_bytes())
    tape_pass.write_bytes(b"new tape passphrase\n")
    out = api.keys_rotate(site, "tape-kek", old_passphrase_file=tmp_path / "old")
    assert len(out["rewrapped"]) == 1 and out["id"]
    result = api.restore(
        site,
        "docs/home",
        "latest",
        agent_config=None,
        target=str(tmp_path / "r"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    assert result.ok if hasattr(result, "ok") else True
    assert (tmp_path / "r" / "notes.txt").exists()


def test_export_by_encryption_key_name_bundles_repository_and_tape_keys(site: Path, tmp_path: Path) -> None:
    """The README's `keys export KEY` with the EncryptionKey's own name: everything that key protects."""
    (tmp_path / "export-pass").write_bytes(b"export secret\n")
    proc = cli(
        site,
        "keys",
        "export",
        "repo-key",
        "--to",
        str(tmp_path / "repo.keys"),
        "--passphrase-file",
        str(tmp_path / "export-pass"),
    )
    assert proc.returncode == 0, proc.stderr  # before: "no key 'repo-key' in .../keys"
    assert json.loads((tmp_path / "repo.keys").read_text())["format"] == "protectctl-repository-key-export"
    # one EncryptionKey for both the repository and the tape library: one bundle holds both
    policy = site / "protect.yaml"
    policy.write_text(policy.read_text().replace("encryption: {key: tape-kek}", "encryption: {key: repo-key}"))
    api.tape_label(site, 1, "monthly")
    backup(site)
    api.run_tape(site, "docs", None)
    proc = cli(
        site,
        "keys",
        "export",
        "repo-key",
        "--to",
        str(tmp_path / "all.keys"),
        "--passphrase-file",
        str(tmp_path / "export-pass"),
    )
    assert proc.returncode == 0, proc.stderr
    bundle = json.loads((tmp_path / "all.keys").read_text())
    formats = sorted(part["format"] for part in bundle["parts"])
    assert bundle["format"] == "protectctl-key-bundle"
    assert formats == ["protectctl-key-export", "protectctl-repository-key-export"]
    assert not any("never exported" in w for w in api.plan(site).warnings)
    # the bundle imports whole: the repository opens under a new local passphrase
    _repo_passphrase(site).write_bytes(b"another passphrase\n")
    added = api.keys_import(site, tmp_path / "all.keys", passphrase_file=tmp_path / "export-pass")
    assert added and _opens(site, b"another passphrase")


def test_export_of_an_unused_encryption_key_says_so(tmp_path: Path) -> None:
    policy_dir = write_policy(tmp_path / "site", POLICY.format(capacity="10MB"))
    (policy_dir / ".protectctl").mkdir()
    for name in ("passphrase", "tape-passphrase"):
        (policy_dir / ".protectctl" / name).write_bytes(b"secret\n")
    proc = cli(policy_dir, "keys", "export", "repo-key", "--to", str(tmp_path / "k"))
    assert proc.returncode == 1 and "protects nothing yet" in proc.stderr and "Traceback" not in proc.stderr
