"""Blob identifiers: 32-byte keyed BLAKE3 digests, and their hex spelling.

Ids are computed by `Repository.blob_id` with a secret key, so they reveal nothing about
the content to someone who can read the storage but has no key.
"""

from __future__ import annotations

from typing import NewType

BlobId = NewType("BlobId", bytes)

BLOB_ID_SIZE = 32


def blob_id_from_hex(text: str) -> BlobId:
    """Parse the 64-hex-digit spelling of a blob id; raises ValueError."""
    if len(text) != 2 * BLOB_ID_SIZE:
        raise ValueError(f"a blob id is {2 * BLOB_ID_SIZE} hex digits, got {len(text)}")
    return BlobId(bytes.fromhex(text))


def short_id(blob_id: BlobId) -> str:
    """A short prefix for messages."""
    return blob_id.hex()[:12]
