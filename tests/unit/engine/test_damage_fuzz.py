"""Fuzz: random bytes in point manifests and index objects yield clear errors and contained
damage, never an internal error. Each example stores junk (raw, or sealed with the real key so
the parsers behind authentication are reached too) into a copy of one small repository, then
lists, restores the untouched point, checks and collects garbage."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protectctl.engine.crypto import aad, content_name
from protectctl.engine.repository import Point, Repository
from protectctl.engine.storage.base import ObjectKind
from protectctl.engine.storage.local import LocalStorage
from tests.unit.engine.conftest import PASSPHRASE, backup, make_repo, random_files, restore

_SETTINGS = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Junk with a realistic shape as well as plain noise: JSON-ish text, index magic, nesting.
_junk = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"PIX1" + b, st.binary(max_size=200)),
    st.builds(lambda t: t.encode(), st.text(alphabet='{}[]":,0123456789abcdefvtrueln ', max_size=200)),
    st.just(b"[" * 5000),
    st.just(b"{}"),
)


class Fixture:
    def __init__(self, root: Path) -> None:
        self.template = root / "template"
        repo = make_repo(self.template)
        self.victim = backup(repo, random_files(1, 20_000), when=1)
        self.files = random_files(2, 20_000)
        self.intact = backup(repo, self.files, when=2)
        repo.close()
        self.work = root / "work"
        self.index_names = sorted(i.name for i in LocalStorage(self.template).list(ObjectKind.INDEX))

    def fresh(self) -> Repository:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.template, self.work)
        return Repository.open(LocalStorage(self.work), PASSPHRASE)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return Fixture(tmp_path_factory.mktemp("fuzz"))


def _exercise(repo: Repository, fx: Fixture) -> None:
    """Everything a damaged object must not break (any internal error fails the test)."""
    points = {p.id: p for p in repo.list_points()}
    assert fx.intact.id in points
    packs = {i.name for i in repo.storage.list(ObjectKind.DATA)}
    report = repo.check()
    if repo.index_damage():
        assert not report.ok
    assert restore(repo, points[fx.intact.id]) == fx.files
    gc = repo.gc()
    if gc.damaged:
        assert {i.name for i in repo.storage.list(ObjectKind.DATA)} == packs
    fresh = Repository.open(repo.storage, PASSPHRASE)  # after gc: what survives still restores
    assert restore(fresh, fresh.load_point(fx.intact.id)) == fx.files


def _store_point(repo: Repository, point: Point, junk: bytes, sealed: bool) -> None:
    data = repo.sealer.seal(junk, aad("point", point.id.encode())) if sealed else junk
    repo.storage.put(ObjectKind.POINTS, point.id, data)


@_SETTINGS
@given(junk=_junk, sealed=st.booleans())
def test_random_manifest_bytes_are_contained(fx: Fixture, junk: bytes, sealed: bool) -> None:
    repo = fx.fresh()
    _store_point(repo, fx.victim, junk, sealed)
    scan = repo.scan_points()
    if fx.victim.id not in {p.id for p in scan.points}:
        assert [d.id for d in scan.damaged] == [fx.victim.id]
        assert f"points/{fx.victim.id}" in scan.damaged[0].problem
    _exercise(repo, fx)


@_SETTINGS
@given(junk=_junk, mode=st.sampled_from(["raw", "sealed", "sealed-zstd", "named-raw"]), which=st.integers(0, 7))
def test_random_index_bytes_are_contained(fx: Fixture, junk: bytes, mode: str, which: int) -> None:
    repo = fx.fresh()
    name = fx.index_names[which % len(fx.index_names)]
    if mode == "raw":
        stored = junk
    elif mode == "sealed":
        stored = repo.sealer.seal(junk, aad("index"))
    elif mode == "sealed-zstd":
        stored = repo.sealer.seal(zstandard.ZstdCompressor().compress(junk), aad("index"))
    else:
        stored = zlib.compress(junk)
    repo.storage.delete(ObjectKind.INDEX, name)
    new_name = content_name(stored) if mode != "raw" else name
    repo.storage.put(ObjectKind.INDEX, new_name, stored)
    _exercise(repo, fx)
