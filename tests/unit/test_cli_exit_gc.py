"""protectctl.cli.main freezes the GC on the way out (the interpreter's shutdown would otherwise
run the cyclic GC over every live object: ~0.1 s of CPU per agent run)."""

from __future__ import annotations

import gc

import pytest

from protectctl import cli


def test_the_cli_freezes_the_gc_on_its_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["protectctl", "--help"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit):
            cli.main()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
