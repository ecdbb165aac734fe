"""Provider discovery and the filesystem member spec."""

from __future__ import annotations

import pytest

from protectctl.errors import ProviderError
from protectctl.provider import HostPreparer, LogShipper, available_kinds, load_provider


def test_load_filesystem_provider() -> None:
    provider = load_provider("filesystem")
    assert provider.kind == "filesystem"
    assert not provider.application and not provider.continuous_log_shipping
    assert not isinstance(provider, HostPreparer) and not isinstance(provider, LogShipper)
    assert "filesystem" in available_kinds()


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ProviderError) as info:
        load_provider("tape-robot")
    assert "tape-robot" in info.value.message and "filesystem" in (info.value.hint or "")


def test_filesystem_spec_validation() -> None:
    provider = load_provider("filesystem")
    assert provider.validate({"path": "/srv/docs", "exclude": ["*.tmp"], "one_file_system": True}) == []
    problems = provider.validate({"path": "srv", "exclude": "*.tmp", "oneFileSystem": True})
    assert any("absolute" in p for p in problems)
    assert any("exclude must be a list" in p for p in problems)
    assert any("unknown field 'oneFileSystem'" in p for p in problems)
    assert provider.validate({}) == ["path is required: the absolute directory to protect, e.g. /srv/docs"]
