"""SSH key pairs for agents and the authorized_keys lines that confine them. Pure but for
key generation (randomness)."""

from __future__ import annotations

import shlex


def new_key_pair(comment: str) -> tuple[bytes, str]:
    """A fresh ed25519 key pair: (OpenSSH private key bytes, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return private, _public_line(key, comment)


def public_key_of(private: bytes, comment: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private, password=None)
    return _public_line(key, comment)


def _public_line(key: object, comment: str) -> str:
    from cryptography.hazmat.primitives import serialization

    public = (
        key.public_key()  # type: ignore[attr-defined]
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{public} {comment}"


def authorized_line(public: str, serve: str, repo: str) -> str:
    """`restrict,command="SERVE serve --append-only --repo REPO" KEY COMMENT`: whatever the key's
    holder asks to run, sshd runs this; no shell, no forwarding, no pty."""
    command = shlex.join([serve, "serve", "--append-only", "--repo", repo])
    if '"' in command or "\\" in command:
        raise ValueError(f"cannot put {command!r} in an authorized_keys command")
    return f'restrict,command="{command}" {public}'


def tunnel_line(public: str, permit: str) -> str:
    """An agent's key on a jump host: `restrict,port-forwarding,permitopen="HOST:PORT",command="/bin/false"`
    — it may open a tunnel to `permit` (the next hop) and nothing else."""
    if '"' in permit or "\\" in permit or "," in permit:
        raise ValueError(f"cannot put {permit!r} in an authorized_keys permitopen")
    return f'restrict,port-forwarding,permitopen="{permit}",command="/bin/false" {public}'
