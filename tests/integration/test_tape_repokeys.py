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
    assert api.keys_export(site, "primary", tmp_path / "repo.key",
                           passphrase_file=tmp_path / "export-pass") == [row["id"]]
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
    result = api.restore(site, "docs/home", "latest", agent_config=None, target=str(tmp_path / "r"), subpaths=[],
                         dry_run=False, overwrite=False, progress=None, from_tape=True)
    assert result.ok if hasattr(result, "ok") else True
    assert (tmp_path / "r" / "notes.txt").exists()
