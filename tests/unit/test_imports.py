"""Every module of protectctl (and of its built-in providers) imports on its own.

A module that imports only after another one was imported first hides an import cycle closed
by the order of imports (docs/architecture.md: cycles are broken by moving the shared type to a
leaf module). Each module is imported as if in a fresh interpreter: a few subprocesses, each
forgetting `protectctl` modules before importing the next one, so third-party libraries are
loaded once per subprocess.

To stay fast, the heavy policy and plan models are built once per subprocess: BASE is every
module that importing BASE_ROOTS loads, a set closed under import-time imports. A cycle through
a module outside BASE cannot pass through BASE (a BASE module imports only BASE modules), so
those modules are imported with BASE kept loaded; BASE's own modules are imported with nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 2

BASE_ROOTS = ("protectctl.policy.load", "protectctl.plan.resources", "protectctl.state.model")
PROBE = """
import importlib, json, sys, traceback
roots, names = sys.argv[1].split(","), sys.argv[2:]
ours = lambda: [m for m in sys.modules if m == "protectctl" or m.startswith("protectctl.")]
for root in roots:
    importlib.import_module(root)
base = set(ours())
failed = {}
for name in sorted(names, key=lambda n: n in base):  # BASE's own modules last: they forget BASE
    for loaded in ours():
        if name in base or loaded not in base:
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
        [sys.executable, "-c", PROBE, ",".join(BASE_ROOTS), *names],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
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
