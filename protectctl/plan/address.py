"""Resource addresses (`source.docs/home`) and source references (`docs/home`), parsed once."""

from __future__ import annotations

from dataclasses import dataclass

RESOURCE_KINDS = ("key", "storage", "library", "host", "agent", "group", "source", "schedule", "access", "secret")


@dataclass(frozen=True, slots=True, order=True)
class Address:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.name}"

    @classmethod
    def parse(cls, text: str) -> Address:
        kind, dot, name = text.partition(".")
        if not dot or not name or kind not in RESOURCE_KINDS:
            raise ValueError(
                f"{text!r} is not a resource address; expected KIND.NAME with KIND one of "
                f"{', '.join(RESOURCE_KINDS)} (e.g. source.docs/home)"
            )
        return cls(kind, name)


@dataclass(frozen=True, slots=True, order=True)
class SourceRef:
    group: str
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.group}/{self.member}" if self.member else self.group

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        group, slash, member = text.partition("/")
        if not group or (slash and not member) or "/" in member:
            raise ValueError(f"{text!r} is not a source; expected GROUP or GROUP/MEMBER (e.g. docs/home)")
        return cls(group, member or None)
