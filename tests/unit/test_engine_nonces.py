"""AES-GCM nonces drawn in batches: unique, the right size, never shared with a forked child."""

from __future__ import annotations

import os

from protectctl.engine.crypto import NONCE_SIZE, TAG_SIZE, Sealer, _NonceSource


def test_nonces_are_unique_across_batches() -> None:
    source = _NonceSource()
    nonces = [source.take() for _ in range(2000)]  # several batches
    assert all(len(n) == NONCE_SIZE for n in nonces)
    assert len(set(nonces)) == len(nonces)


def test_a_forked_child_never_reuses_the_parents_batch() -> None:
    source = _NonceSource()
    source.take()  # the parent now holds a batch with unused nonces
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next nonce and leave at once
        os.write(write_end, source.take())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, NONCE_SIZE)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == NONCE_SIZE and child != source.take()


def test_sealed_records_still_open() -> None:
    sealer = Sealer(b"k" * 32)
    out = memoryview(bytearray(NONCE_SIZE + 5 + TAG_SIZE))
    sealer.seal_into(b"hello", b"aad", out)
    assert sealer.open(bytes(out), b"aad", "x") == b"hello"
    assert sealer.open(sealer.seal(b"x", b"a"), b"a", "y") == b"x"
    assert bytes(out[:NONCE_SIZE]) != sealer.seal(b"x", b"a")[:NONCE_SIZE]
