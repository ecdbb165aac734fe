"""Every module of protectctl (and of its built-in providers) imports on its own.

A module that imports only after another one was imported first hides an import cycle closed
by the order of imports (docs/architecture.md: cycles are broken by moving the shared type to a
leaf module). Each module is imported as if in a fresh interpreter: a few subprocesses, each
forgetting every `protectctl` module before importing the next one, so third-party libraries
are loaded once per subprocess and the walk stays fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 2

PROBE = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "protectctl" or m.startswith("protectctl.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as err:  # noqa: BLE001 - reported below
        failed[name] = "".join(traceback.format_exception_only(type(err), err)).strip()
print(json.dumps(failed))
"""


def _module_names() -> list[str]:
    names = []
    for folder, package in (("protectctl", "protectctl"), ("providers", "protectctl.providers")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join([package, *parts]))
    return names


def _import_each(names: list[str]) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *names], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_every_module_imports_on_its_own() -> None:
    names = _module_names()
    assert "protectctl.api" in names and "protectctl.providers.filesystem" in names
    batches = [names[i::BATCHES] for i in range(BATCHES)]
    with ThreadPoolExecutor(BATCHES) as pool:
        failed = {name: why for found in pool.map(_import_each, batches) for name, why in found.items()}
    assert not failed, "\n".join(f"{name}: {why}" for name, why in sorted(failed.items()))
