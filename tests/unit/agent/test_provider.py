"""Provider discovery and the filesystem member spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protectctl.errors import ProviderError
from protectctl.provider import HostPreparer, LogStreamer, MemberChecker, available_kinds, load_provider


def test_load_filesystem_provider() -> None:
    provider = load_provider("filesystem")
    assert provider.kind == "filesystem"
    assert not provider.traits.application and not provider.traits.continuous_log_shipping
    assert not provider.traits.multi_host
    assert not isinstance(provider, HostPreparer) and not isinstance(provider, LogStreamer)
    assert "filesystem" in available_kinds()


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ProviderError) as info:
        load_provider("tape-robot")
    assert "tape-robot" in info.value.message and "filesystem" in (info.value.hint or "")


def test_filesystem_spec_validation() -> None:
    provider = load_provider("filesystem")
    model = provider.spec_model
    spec = model.model_validate({"path": "/srv/docs", "exclude": ["*.tmp"], "oneFileSystem": True})
    assert isinstance(provider, MemberChecker)
    assert provider.check_member(spec, source="g/m", hosts=None) == []
    with pytest.raises(ValidationError) as info:
        model.model_validate({"path": "/srv", "exclude": "*.tmp", "oneFileSystm": True})
    kinds = {(e["loc"], e["type"]) for e in info.value.errors()}
    assert (("exclude",), "tuple_type") in kinds and (("oneFileSystm",), "extra_forbidden") in kinds
    with pytest.raises(ValidationError) as info:
        model.model_validate({})
    assert [e["loc"] for e in info.value.errors()] == [("path",)]
    bad = model.model_validate({"path": "/srv", "include": ["[z-a]"]})
    (problem,) = provider.check_member(bad, source="g/m", hosts=None)
    assert problem.path == ("include", 0) and "not a valid pattern" in problem.summary
