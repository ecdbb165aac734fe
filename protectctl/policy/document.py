"""The loaded policy's types: documents, where they came from, problems found in them, and the
Policy that holds them. A leaf: policy.load builds these, policy.rules checks them, the plan
reads them, and none of them needs the others to name the types."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from protectctl.errors import Diagnostic, Severity
from protectctl.policy.model import CamelSpec, Kind, Metadata

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class DocRef:
    """Where a document came from: its file and its index among the file's documents."""

    file: Path
    index: int
    shipped: bool = False


@dataclass(frozen=True, slots=True)
class Document:
    kind: Kind
    metadata: Metadata
    spec: CamelSpec
    ref: DocRef

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True, slots=True)
class Problem:
    """A diagnostic whose location is a key path, resolved to line:col only when shown."""

    ref: DocRef
    path: KeyPath
    summary: str
    detail: str | None = None
    severity: Severity = Severity.ERROR


@dataclass(slots=True)
class Policy:
    """All documents of a policy directory, by kind and name."""

    root: Path
    documents: dict[Kind, dict[str, Document]] = field(default_factory=dict)
    warnings: tuple[Diagnostic, ...] = ()
    # documents whose envelope is valid but whose spec is not: already reported, so a
    # reference to one must not be reported again as "not defined"
    broken: set[tuple[Kind, str]] = field(default_factory=set)

    def of(self, kind: Kind) -> dict[str, Document]:
        return self.documents.get(kind, {})

    def get(self, kind: Kind, name: str) -> Document | None:
        return self.documents.get(kind, {}).get(name)

    def all(self) -> Iterator[Document]:
        for kind in Kind:
            yield from self.documents.get(kind, {}).values()
