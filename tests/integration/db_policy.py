"""The policy a database source's tests write: local Hosts, a key read from ./passphrase, a local
Storage, a 5-minute-sync SLA and one ProtectionGroup with one member, whose provider block the
test gives. The MariaDB tests use it (the PostgreSQL ones spell the same documents out)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path


def db_policy(base: Path, member_block: str, *, group: str, member: str, hosts: Sequence[str] = ("db1",)) -> str:
    """The policy's YAML. `base`: where the hosts' roots (`BASE/<host>root`) and the repository
    (`BASE/repo`) live; `member_block`: the member's lines after its name (`host:`/`hosts:` and the
    provider block), unindented. With several `hosts`, the member must name them itself."""
    documents = [
        f"""\
        apiVersion: protectctl/v1
        kind: Host
        metadata: {{name: {host}}}
        spec: {{address: local, root: {base}/{host}root}}
        """
        for host in hosts
    ]
    documents += [
        """\
        apiVersion: protectctl/v1
        kind: EncryptionKey
        metadata: {name: repo-key}
        spec:
          passphrase: {file: ./passphrase}
        """,
        f"""\
        apiVersion: protectctl/v1
        kind: Storage
        metadata: {{name: primary}}
        spec: {{type: local, path: {base}/repo, encryption: {{key: repo-key}}}}
        """,
        """\
        apiVersion: protectctl/v1
        kind: SLA
        metadata: {name: db-tier}
        spec:
          sync: every 5m
          full: daily at 20:00
          retention: {disk: 14d}
        """,
        f"""\
        apiVersion: protectctl/v1
        kind: ProtectionGroup
        metadata: {{name: {group}}}
        spec:
          sla: db-tier
          storage: primary
          members:
            - name: {member}
        """,
    ]
    text = "---\n".join(textwrap.dedent(d) for d in documents)
    return text + textwrap.indent(textwrap.dedent(member_block), " " * 6)
