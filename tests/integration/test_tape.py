"""Tape end to end: real repositories, real virtual cartridges, the real API and CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from protectctl import api
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import CorruptionError, TapeError
from tests.conftest import run_cli, write_policy

MARKER = b"PLAINTEXT-MARKER-7f3a9c "

POLICY = """\
apiVersion: protectctl/v1
kind: Host
metadata: {{name: local}}
spec: {{address: local, scheduler: cron, root: ./.protectctl/root}}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {{name: repo-key}}
spec: {{passphrase: {{file: ./.protectctl/passphrase}}}}
---
apiVersion: protectctl/v1
kind: EncryptionKey
metadata: {{name: tape-kek}}
spec: {{passphrase: {{file: ./.protectctl/tape-passphrase}}}}
---
apiVersion: protectctl/v1
kind: Storage
metadata: {{name: primary}}
spec: {{type: local, path: ./.protectctl/repo, encryption: {{key: repo-key}}}}
---
apiVersion: protectctl/v1
kind: TapeLibrary
metadata: {{name: lib1}}
spec:
  type: virtual
  path: ./.protectctl/tape/lib1
  slots: 10
  drives: 2
  media: {{type: LTO-9, capacity: {capacity}}}
  encryption: {{key: tape-kek}}
---
apiVersion: protectctl/v1
kind: SLA
metadata: {{name: tier1}}
spec:
  sync: every 15m
  full: daily at 20:00
  retention: {{disk: 14d}}
  tape: {{library: lib1, pool: monthly, schedule: weekly on sun at 02:00, retention: 7y, copyFrom: disk}}
---
apiVersion: protectctl/v1
kind: ProtectionGroup
metadata: {{name: docs}}
spec:
  sla: tier1
  storage: primary
  members:
    - name: home
      host: local
      filesystem: {{path: ./data}}
"""


def write_data(root: Path, seed: int, big_files: int = 1) -> None:
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_bytes(MARKER * 2000 + str(seed).encode())
    (root / "sub" / "small.txt").write_text(f"version {seed}\n")
    for i in range(big_files):
        (root / "sub" / f"big{i}.bin").write_bytes(rng.randbytes(700_000))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    policy_dir = write_policy(tmp_path / "site", POLICY.format(capacity="1MB"))
    write_data(policy_dir / "data", seed=1)
    api.apply(policy_dir, confirm=lambda _plan: True)
    return policy_dir


def backup(policy_dir: Path) -> None:
    (result,) = api.run_backup(policy_dir, "full", "docs", None, agent_config=None, progress=None)
    assert result.ok


def cartridge_files(policy_dir: Path) -> list[Path]:
    return [p for p in (policy_dir / ".protectctl/tape/lib1").rglob("f*") if p.is_file()]


def test_weekly_copy_prune_restore_by_time_from_tape(site: Path, tmp_path: Path) -> None:
    api.tape_label(site, 4, "monthly")
    backup(site)
    first = snapshot(site / "data")
    week1 = api.run_tape(site, "docs", None)
    assert len(week1.copied) == 1
    write_data(site / "data", seed=2)
    backup(site)
    second = snapshot(site / "data")
    week2 = api.run_tape(site, "docs", None)
    assert len(week2.copied) == 1
    assert api.run_tape(site, "docs", None).copied == ()  # nothing new: nothing copied
    # the week-2 copy was appended to the partly used cartridge of week 1
    assert week1.copied[0].barcodes[-1] == week2.copied[0].barcodes[0]

    # disk points pruned: the repository forgets everything and collects its data
    storage = LocalStorage(site / ".protectctl/repo")
    passphrase = (site / ".protectctl/passphrase").read_bytes().strip()
    with Repository.open(storage, passphrase) as repo:
        repo.forget_points([p.id for p in repo.list_points()])
        repo.gc()
        assert repo.list_points() == []

    # by time, chosen automatically because the disk no longer has the point
    # the midpoint of the two copies: on a fast machine the second point is under a second later
    t1, t2 = week1.copied[0].point_time, week2.copied[0].point_time
    between = (t1 + (t2 - t1) / 2).isoformat()
    result = api.restore(
        site,
        "docs/home",
        between,
        agent_config=None,
        target=str(tmp_path / "r1"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
    )
    assert result.point_id == week1.copied[0].point_id
    assert snapshot(tmp_path / "r1") == first
    run_cli(
        site,
        "restore",
        "docs/home",
        "--to-time",
        "latest",
        "--from",
        "tape",
        "--target",
        str(tmp_path / "r2"),
    )
    assert snapshot(tmp_path / "r2") == second

    # no plaintext of the protected files anywhere on the cartridges
    for path in cartridge_files(site):
        assert MARKER.strip() not in path.read_bytes(), path


def test_spanning_three_cartridges_and_a_flipped_byte(site: Path, tmp_path: Path) -> None:
    write_data(site / "data", seed=3, big_files=3)  # ~2.2 MB on 1 MB cartridges
    backup(site)
    api.tape_label(site, 4, "monthly")
    (copied,) = api.run_tape(site, "docs", None).copied
    assert len(copied.barcodes) == 3
    rows = {r.barcode: r for r in api.tape_list(site)}
    assert [rows[b].state for b in copied.barcodes] == ["full", "full", "filling"]
    api.restore(
        site,
        "docs/home",
        "latest",
        agent_config=None,
        target=str(tmp_path / "ok"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    assert snapshot(tmp_path / "ok") == snapshot(site / "data")

    damaged = site / ".protectctl/tape/lib1/cartridges" / copied.barcodes[1] / "f000001"
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="authentication failed"):
        api.restore(
            site,
            "docs/home",
            "latest",
            agent_config=None,
            target=str(tmp_path / "bad"),
            subpaths=[],
            dry_run=False,
            overwrite=False,
            progress=None,
            from_tape=True,
        )
    assert not (tmp_path / "bad").exists()  # detected before anything was written


def test_inventory_rebuild_gives_the_same_list(site: Path) -> None:
    api.tape_label(site, 3, "monthly")
    backup(site)
    api.run_tape(site, "docs", None)
    before = run_cli(site, "tape", "list", "--json").stdout
    (site / ".protectctl/tape/catalog.json").unlink()
    run_cli(site, "tape", "inventory", "--rebuild")
    assert run_cli(site, "tape", "list", "--json").stdout == before
    assert "PT0001L9" in run_cli(site, "tape", "list").stdout


def test_key_rotation_keeps_old_cartridges_readable(site: Path, tmp_path: Path) -> None:
    api.tape_label(site, 2, "monthly")
    backup(site)
    (old,) = api.run_tape(site, "docs", None).copied
    old_key = api.tape_list(site)[0].key_id
    rotated = api.keys_rotate(site, "tape-kek")
    assert rotated["id"] != old_key
    # the partly used cartridge is full for this test: later copies need a fresh cartridge
    service = api.tape_service(site)
    for cart in service.catalog.cartridges.values():
        if cart.state.value == "filling":
            cart.state = cart.state.__class__("full")
    service.save()
    api.tape_label(site, 1, "monthly")
    write_data(site / "data", seed=5)
    backup(site)
    (new,) = api.run_tape(site, "docs", None).copied
    keys = {r.barcode: r.key_id for r in api.tape_list(site)}
    assert keys[new.barcodes[0]] == rotated["id"]
    assert keys[old.barcodes[0]] == old_key
    # between the two points, however close together the machine took them (once `+ 0.5 s`,
    # which a fast machine beat: its second point came 0.487 s after the first)
    at_old = (old.point_time + (new.point_time - old.point_time) / 2).isoformat()
    result = api.restore(
        site,
        "docs/home",
        at_old,
        agent_config=None,
        target=str(tmp_path / "old"),
        subpaths=[],
        dry_run=False,
        overwrite=False,
        progress=None,
        from_tape=True,
    )
    assert result.point_id == old.point_id

    # plan warns about keys never exported; exporting silences the warning
    assert any(w.startswith("tape key") and "never exported" in w for w in api.plan(site).warnings)
    api.keys_export(site, "tape-kek", tmp_path / "keys.json")
    assert not any(w.startswith("tape key") and "never exported" in w for w in api.plan(site).warnings)
    assert MARKER.strip() not in (tmp_path / "keys.json").read_bytes()


def test_recycle_never_touches_unexpired_media_and_offsite_restore_names_the_vault(site: Path, tmp_path: Path) -> None:
    api.tape_label(site, 3, "monthly")
    backup(site)
    (copy,) = api.run_tape(site, "docs", None).copied
    barcode = copy.barcodes[0]
    before = {p: p.read_bytes() for p in cartridge_files(site)}
    assert api.tape_recycle(site).recycled == ()
    assert {p: p.read_bytes() for p in cartridge_files(site)} == before

    # a catalog that lies (retention shortened by hand) is caught by re-reading the cartridge
    service = api.tape_service(site)
    service.catalog.copies[copy.point_id].retention_s = 0
    result = service.recycle()
    assert result.recycled == () and barcode in result.refused[0]
    assert {p: p.read_bytes() for p in cartridge_files(site)} == before

    # seven years on, the cartridge is recycled: back to scratch, under the current key
    service = api.tape_service(site)
    service.now = service.now + timedelta(days=7 * 366)
    assert service.recycle().recycled == (barcode,)
    assert service.catalog.cartridges[barcode].state.value == "scratch"
    assert service.catalog.copies == {}

    # an off-site cartridge: restore names the barcode and the vault
    backup(site)
    (copy2,) = api.run_tape(site, "docs", None).copied
    run_cli(site, "tape", "move", copy2.barcodes[0], "--to", "vault-east")
    listed = json.loads(run_cli(site, "tape", "list", "--json").stdout)["cartridges"]
    assert {c["barcode"]: c["location"] for c in listed}[copy2.barcodes[0]] == "vault vault-east"
    proc = run_cli(
        site,
        "restore",
        "docs/home",
        "--to-time",
        "latest",
        "--from",
        "tape",
        "--target",
        str(tmp_path / "x"),
        expect=1,
    )
    assert copy2.barcodes[0] in proc.stderr and "vault-east" in proc.stderr
    run_cli(site, "tape", "move", copy2.barcodes[0], "--to", "library")
    run_cli(site, "restore", "docs/home", "--to-time", "latest", "--from", "tape", "--target", str(tmp_path / "y"))
    hist = api.tape_service(site).catalog.cartridges[copy2.barcodes[0]].history
    assert [m.note for m in hist][-2:] == ["moved to vault-east", "moved to library"]


def test_no_cartridge_is_a_clear_error(site: Path) -> None:
    backup(site)
    with pytest.raises(TapeError, match="no cartridge with room"):
        api.run_tape(site, "docs", None)
    proc = run_cli(site, "run", "tape", "docs", expect=1)
    assert "no cartridge" in proc.stderr
    shutil.rmtree(site / ".protectctl/tape", ignore_errors=True)
    assert os.path.isdir(site / "data")


def test_recycle_refuses_a_cartridge_it_cannot_read_whole(site: Path) -> None:
    """The re-read before recycling is the check against a catalog that lies: damage that hides
    what a cartridge holds refuses the recycle instead of passing it."""
    api.tape_label(site, 1, "monthly")
    backup(site)
    (copy,) = api.run_tape(site, "docs", None).copied
    damaged = site / ".protectctl/tape/lib1/cartridges" / copy.barcodes[0] / "f000001"
    raw = bytearray(damaged.read_bytes())
    raw[40] ^= 0x01  # inside the point header
    damaged.write_bytes(bytes(raw))
    service = api.tape_service(site)
    service.now = service.now + timedelta(days=8 * 366)
    result = service.recycle()
    assert result.recycled == () and "damaged" in result.refused[0]
    assert bytes(raw) == damaged.read_bytes()
