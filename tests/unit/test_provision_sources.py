"""`plan --refresh` source path warnings: a host that cannot be asked is a warning, never a crash."""

from __future__ import annotations

from pathlib import Path

from protectctl.plan.address import Address
from protectctl.plan.resources import Resource
from protectctl.provision.sources import source_warnings


def _source(host: str, path: Path) -> Resource:
    return Resource(
        Address("source", f"g/{host}"),
        {"provider": "filesystem", "source": f"g/{host}", "spec": {"path": str(path)}},
        host=host,
    )


def test_missing_paths_and_unusable_connection_settings_are_warnings(tmp_path: Path) -> None:
    resources = [
        Resource(Address("host", "here"), {"address": "local"}),
        Resource(Address("host", "far"), {"address": "192.0.2.1", "gateway": "nowhere"}),
        _source("here", tmp_path / "missing"),
        _source("far", tmp_path),
    ]
    warnings = source_warnings(resources)
    assert any("missing does not exist" in w and "host here" in w for w in warnings), warnings
    assert any(w.startswith("host far: its source paths could not be checked") and "gateway" in w for w in warnings), (
        warnings
    )
