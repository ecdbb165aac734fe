"""Blob identifiers: 32-byte keyed BLAKE3 digests, and their hex spelling.

Ids are computed by `Repository.blob_id` with a secret key, so they reveal nothing about
the content to someone who can read the storage but has no key.
"""

from __future__ import annotations

from typing import NewType

BlobId = NewType("BlobId", bytes)

BLOB_ID_SIZE = 32


def blob_id_from_bytes(raw: bytes) -> BlobId:
    """Check the length of `raw` and type it as a BlobId; raises ValueError."""
    if len(raw) != BLOB_ID_SIZE:
        raise ValueError(f"a blob id is {BLOB_ID_SIZE} bytes, got {len(raw)}")
    return BlobId(bytes(raw))


def blob_id_from_hex(text: str) -> BlobId:
    """Parse the 64-hex-digit spelling of a blob id; raises ValueError."""
    if len(text) != 2 * BLOB_ID_SIZE:
        raise ValueError(f"a blob id is {2 * BLOB_ID_SIZE} hex digits, got {len(text)}")
    return BlobId(bytes.fromhex(text))


def blob_id_hex(blob_id: BlobId) -> str:
    """The 64-hex-digit spelling used in messages and reports."""
    return blob_id.hex()


def short_id(blob_id: BlobId) -> str:
    """A short prefix for messages."""
    return blob_id.hex()[:12]
