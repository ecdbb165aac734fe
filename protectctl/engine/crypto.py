"""Keys and authenticated encryption for everything the repository stores.

Owns: the master keys (an AES-256-GCM encryption key, a BLAKE3 id key and the chunker's
gear seed, all random), wrapping them under a passphrase with scrypt + AES-256-GCM, and
`seal`/`open_sealed`, the one way bytes are encrypted at rest. Every sealed object binds
a purpose string plus its identity (blob id, point id, lock name) as associated data, so
a ciphertext moved to another place fails authentication instead of being misread.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from protectctl.errors import CorruptionError, RepositoryError, WrongKeyError

if TYPE_CHECKING:
    from protectctl.engine.keycache import DerivedKeyCache

NONCE_SIZE = 12
TAG_SIZE = 16
# scrypt n=2**15, r=8, p=1: 32 MiB and ~0.1 s per open on a 2020 laptop, the cost the
# scrypt paper recommends for interactive logins; stored per key file, so it can grow.
DEFAULT_KDF_N = 2**15
DEFAULT_KDF_R = 8
DEFAULT_KDF_P = 1


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """The secrets of one repository; never stored unwrapped."""

    encryption: bytes  # 32 bytes, AES-256-GCM
    id_key: bytes  # 32 bytes, keyed BLAKE3 for blob ids
    chunker_seed: int  # < 2**63: a secret gear table, so chunk boundaries leak nothing

    @staticmethod
    def generate() -> MasterKeys:
        seed = int.from_bytes(os.urandom(8), "big") >> 1
        return MasterKeys(os.urandom(32), os.urandom(32), seed)


@dataclass(frozen=True, slots=True)
class KdfParams:
    n: int
    r: int
    p: int
    salt: bytes

    @staticmethod
    def fresh(n: int = DEFAULT_KDF_N) -> KdfParams:
        return KdfParams(n=n, r=DEFAULT_KDF_R, p=DEFAULT_KDF_P, salt=os.urandom(32))

    def derive(self, passphrase: bytes) -> bytes:
        return Scrypt(salt=self.salt, length=32, n=self.n, r=self.r, p=self.p).derive(passphrase)


# Random nonces are drawn from the OS CSPRNG this many at a time: one getrandom(2) per 256
# records instead of one per record. Each syscall releases the GIL, and on a busy backup
# (compression threads, the uploader) getting it back cost ~0.15 ms per record (cProfile
# of a 10 % sync: 513 urandom calls, 78 ms). Slicing one larger draw is exactly as random.
_NONCE_BATCH = 256


class _NonceSource:
    """Random 96-bit nonces from batched os.urandom draws; thread-safe and fork-safe (a child
    process never reuses a nonce its parent drew: the batch is dropped when the pid changes)."""

    __slots__ = ("_batch", "_lock", "_pid", "_pos")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch = b""
        self._pos = 0
        self._pid = 0

    def take(self) -> bytes:
        with self._lock:
            pos, pid = self._pos, os.getpid()
            if pos + NONCE_SIZE > len(self._batch) or pid != self._pid:
                self._batch, self._pid, pos = os.urandom(NONCE_SIZE * _NONCE_BATCH), pid, 0
            self._pos = pos + NONCE_SIZE
            return self._batch[pos : pos + NONCE_SIZE]


_nonces = _NonceSource()


class Sealer:
    """AES-256-GCM with a random 96-bit nonce; output is nonce || ciphertext || tag.

    Random nonces are safe up to ~2**32 messages per key (NIST SP 800-38D); at ~1 MiB per
    blob that is petabytes, far past one repository's life.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = _nonces.take()
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_into(self, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """`seal`, written into `out` (exactly NONCE_SIZE + len(plaintext) + TAG_SIZE bytes): no copy."""
        if len(out) != NONCE_SIZE + len(plaintext) + TAG_SIZE:
            raise ValueError("seal_into: the output buffer has the wrong size")
        nonce = _nonces.take()
        out[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plaintext, aad, out[NONCE_SIZE:])

    def open_into(self, sealed: bytes | memoryview, aad: bytes, out: memoryview, what: str) -> None:
        """`open`, written into `out` (exactly len(sealed) - NONCE_SIZE - TAG_SIZE bytes)."""
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise CorruptionError(f"{what}: too short to be an encrypted object ({len(sealed)} bytes)")
        view = memoryview(sealed)
        try:
            self._aead.decrypt_into(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad, out)
        except InvalidTag as err:
            raise CorruptionError(f"{what}: authentication failed (damaged or tampered)") from err

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """Decrypt and authenticate; raises CorruptionError naming `what`."""
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise CorruptionError(f"{what}: too short to be an encrypted object ({len(sealed)} bytes)")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad)
        except InvalidTag as err:
            raise CorruptionError(f"{what}: authentication failed (damaged or tampered)") from err


def aad(purpose: str, *parts: bytes) -> bytes:
    """Associated data: a purpose tag plus identity parts, unambiguously joined."""
    out = bytearray(b"protectctl/" + purpose.encode("ascii") + b"\x00")
    for part in parts:
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)


def keyed_hasher(id_key: bytes) -> blake3.blake3:
    return blake3.blake3(key=id_key)


def content_name(data: bytes | memoryview) -> str:
    """Name of a content-addressed object (pack, index): unkeyed BLAKE3 of its stored bytes.

    Unkeyed on purpose: the stored bytes are ciphertext, so the hash reveals nothing, and
    anyone (a storage scrubber, `check` without reading data) can verify an object's name.
    """
    return blake3.blake3(data).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise CorruptionError(f"{what}: expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise CorruptionError(f"{what}: invalid base64") from err


def wrap_keys(keys: MasterKeys, passphrase: bytes, repo_id: str, key_name: str, kdf: KdfParams) -> bytes:
    """The stored form of a key file: KDF parameters in clear, master keys sealed."""
    payload = json.dumps(
        {
            "repository": repo_id,
            "encryption": _b64(keys.encryption),
            "id_key": _b64(keys.id_key),
            "chunker_seed": keys.chunker_seed,
        },
        sort_keys=True,
    ).encode()
    sealed = Sealer(kdf.derive(passphrase)).seal(payload, aad("keys", repo_id.encode(), key_name.encode()))
    document: dict[str, object] = {
        "version": 1,
        "kdf": {"name": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": _b64(kdf.salt)},
        "sealed": _b64(sealed),
    }
    document["checksum"] = _key_checksum(document)
    return json.dumps(document, sort_keys=True, indent=1).encode()


def _key_checksum(document: dict[str, object]) -> str:
    """Unkeyed BLAKE3 of the KDF parameters and the sealed keys: lets a damaged key file be told
    from a wrong passphrase (both fail authentication alike). Key files written before it
    have none and cannot tell the two apart."""
    covered = {"version": document.get("version"), "kdf": document.get("kdf"), "sealed": document.get("sealed")}
    return blake3.blake3(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def unwrap_keys(
    stored: bytes, passphrase: bytes, repo_id: str, key_name: str, cache: DerivedKeyCache | None = None
) -> MasterKeys:
    """Open a key file; raises WrongKeyError if the passphrase does not open it.

    With `cache` (an agent's, engine/keycache.py), a derived key cached for this key file's
    KDF parameters is tried first; if there is none or it does not open the file, scrypt runs
    as without a cache, and a key that opens the file is cached for the next run."""
    what = f"keys/{key_name}"
    kdf, sealed, intact = _parse_key_file(stored, what)
    associated = aad("keys", repo_id.encode(), key_name.encode())
    fingerprint = None
    if cache is not None:
        from protectctl.engine.keycache import kdf_fingerprint

        fingerprint = kdf_fingerprint(kdf.n, kdf.r, kdf.p, kdf.salt)
        cached = cache.lookup(fingerprint, passphrase)
        if cached is not None:
            try:
                return _parse_master(Sealer(cached).open(sealed, associated, what), repo_id, what)
            except CorruptionError:
                pass  # a stale or damaged entry: derive the key as without a cache
    try:
        derived = kdf.derive(passphrase)
        plain = Sealer(derived).open(sealed, associated, what)
    except CorruptionError as err:
        if intact is False:
            raise CorruptionError(f"{what}: the key file is damaged (its checksum does not match)") from err
        raise WrongKeyError(
            "the passphrase does not open this repository",
            hint="check the EncryptionKey the Storage refers to",
        ) from err
    keys = _parse_master(plain, repo_id, what)
    if cache is not None and fingerprint is not None:
        cache.store(fingerprint, passphrase, derived)
    return keys


def _parse_key_file(stored: bytes, what: str) -> tuple[KdfParams, bytes, bool | None]:
    """KDF parameters, sealed keys, and whether the checksum matches (None: the file has none)."""
    try:
        document = json.loads(stored)
        kdf = document["kdf"]
        if kdf["name"] != "scrypt" or document["version"] != 1:
            raise RepositoryError(f"{what}: unsupported key format {kdf['name']!r} v{document['version']}")
        checksum = document.get("checksum")
        intact = None if checksum is None else checksum == _key_checksum(document)
        params = KdfParams(n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]), salt=_unb64(kdf["salt"], what))
        if not (1 < params.n <= 2**24 and params.n & (params.n - 1) == 0 and 0 < params.r <= 64 and 0 < params.p <= 16):
            raise ValueError("KDF parameters out of range")
        return params, _unb64(document["sealed"], what), intact
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CorruptionError(f"{what}: the key file is damaged (not a protectctl key file)") from err


def _parse_master(plain: bytes, repo_id: str, what: str) -> MasterKeys:
    try:
        payload = json.loads(plain)
        keys = MasterKeys(
            encryption=_unb64(payload["encryption"], what),
            id_key=_unb64(payload["id_key"], what),
            chunker_seed=int(payload["chunker_seed"]),
        )
        owner = payload["repository"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptionError(f"{what}: master key payload is malformed") from err
    if owner != repo_id or len(keys.encryption) != 32 or len(keys.id_key) != 32:
        raise CorruptionError(f"{what}: belongs to another repository or is malformed")
    return keys
