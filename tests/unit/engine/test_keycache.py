"""The agent's derived-key cache (engine/keycache.py): scrypt is skipped only when the cache
provably holds the key of this passphrase and this key file; anything else is ignored safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from protectctl.engine import crypto
from protectctl.engine.keycache import DerivedKeyCache, cache_path_for
from protectctl.engine.repository import Repository
from protectctl.engine.storage.local import LocalStorage
from protectctl.errors import WrongKeyError

PASS = b"correct horse"


@pytest.fixture
def repo_and_cache(tmp_path: Path) -> tuple[LocalStorage, DerivedKeyCache]:
    storage = LocalStorage(tmp_path / "repo")
    Repository.init(storage, PASS, kdf_n=2**10)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return storage, DerivedKeyCache(cache_path_for(state, "/etc/protectctl/keys/k.passphrase"))


@pytest.fixture
def kdf_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = crypto.KdfParams.derive

    def counting(self: crypto.KdfParams, passphrase: bytes) -> bytes:
        calls.append(1)
        return real(self, passphrase)

    monkeypatch.setattr(crypto.KdfParams, "derive", counting)
    return calls


def _open(storage: LocalStorage, cache: DerivedKeyCache | None, passphrase: bytes = PASS) -> str:
    with Repository.open(storage, passphrase, key_cache=cache) as repo:
        return repo.blob_id(b"same keys, same ids").hex()


def test_a_valid_cache_skips_the_kdf_and_opens_the_same_keys(
    repo_and_cache: tuple[LocalStorage, DerivedKeyCache], kdf_calls: list[int]
) -> None:
    storage, cache = repo_and_cache
    reference = _open(storage, None)
    assert len(kdf_calls) == 1
    assert _open(storage, cache) == reference  # first run: derives and fills the cache
    assert len(kdf_calls) == 2
    assert _open(storage, cache) == reference and _open(storage, cache) == reference
    assert len(kdf_calls) == 2  # later runs: no scrypt
    data = cache.path.read_bytes()
    assert os.stat(cache.path).st_mode & 0o777 == 0o600 and os.stat(cache.path.parent).st_mode & 0o777 == 0o700
    assert PASS not in data and b"correct" not in data  # the passphrase is not in it


def test_a_wrong_passphrase_is_refused_even_with_a_cache(
    repo_and_cache: tuple[LocalStorage, DerivedKeyCache], kdf_calls: list[int]
) -> None:
    storage, cache = repo_and_cache
    _open(storage, cache)
    with pytest.raises(WrongKeyError):
        _open(storage, cache, b"wrong horse")


@pytest.mark.parametrize("damage", ["garbage", "group-readable", "forged-entry", "other-key-file"])
def test_a_stale_or_untrusted_cache_is_ignored(
    repo_and_cache: tuple[LocalStorage, DerivedKeyCache], kdf_calls: list[int], tmp_path: Path, damage: str
) -> None:
    storage, cache = repo_and_cache
    reference = _open(storage, cache)
    if damage == "garbage":
        cache.path.write_bytes(b"\x00not json")
    elif damage == "group-readable":
        cache.path.chmod(0o640)
    elif damage == "forged-entry":  # an entry that opens under the passphrase but holds another key
        (fingerprint,) = json.loads(cache.path.read_bytes())["entries"]
        cache.store(fingerprint, PASS, os.urandom(32))
    else:  # the key file was replaced (a new repository at the same place): its salt is new
        for path in (tmp_path / "repo").rglob("*"):
            if path.is_file():
                path.unlink()
        Repository.init(storage, PASS, kdf_n=2**10)
        reference = _open(storage, None)
    before = len(kdf_calls)
    assert _open(storage, cache) == reference  # derived as without a cache
    assert len(kdf_calls) == before + 1
    assert _open(storage, cache) == reference  # rewritten (a private file again): no scrypt next time
    assert len(kdf_calls) == before + 1
    assert os.stat(cache.path).st_mode & 0o777 == 0o600
