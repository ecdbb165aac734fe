"""protectctl.cli.main freezes the GC on the way out (the interpreter's shutdown would otherwise
run the cyclic GC over every live object: ~0.1 s of CPU per agent run)."""

from __future__ import annotations

import gc
import importlib.util

import pytest


def _entry_point_module() -> object:
    """protectctl/cli/__init__.py executed afresh, unregistered: once any test has imported the
    submodule protectctl.cli.main, the package's `main` attribute is that submodule, no longer
    the console-script function (the suite runs in a random order)."""
    spec = importlib.util.find_spec("protectctl.cli")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_freezes_the_gc_on_its_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = _entry_point_module()
    assert callable(cli.main)  # type: ignore[attr-defined]
    monkeypatch.setattr("sys.argv", ["protectctl", "--help"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit):
            cli.main()  # type: ignore[attr-defined]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
