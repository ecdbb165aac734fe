"""The direction of imports (docs/architecture.md), checked by reading the code.

* No module of protectctl/ names a provider: none imports one (`protectctl.providers...`),
  and no code mentions PostgreSQL (docstrings and comments may, as examples).
* Providers see protectctl only through protectctl.provider and a few pure modules.
* The policy layer reads nothing above it: no plan, apply, agent, restore, tape, cli or api.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a provider may import from protectctl: the contract, errors, progress, units, and the
# spec model base (docs/architecture.md). Its own package is its own business.
PROVIDER_ALLOWED = (
    "protectctl.provider",
    "protectctl.errors",
    "protectctl.progress",
    "protectctl.units",
    "protectctl.policy.model",
)


def _modules(folder: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every module an import statement names, in functions and TYPE_CHECKING blocks too."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            # `from protectctl import providers` names the module too
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_module_outside_providers_imports_a_provider() -> None:
    offences = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path, tree in _modules("protectctl")
        for line, name in _imports(tree)
        if name == "providers" or name.startswith(("providers.", "protectctl.providers"))
    ]
    assert not offences, "\n".join(offences)


# The state backend that keeps protectctl's own state in PostgreSQL (like Terraform's pg backend)
# is a state seam implementation, not the PostgreSQL data-source provider: its modules may say so.
STATE_BACKEND_FILES = (
    "protectctl/state/postgres.py",
    "protectctl/state/factory.py",
    "protectctl/cli/state.py",
    "protectctl/policy/model.py",
)
_STATE_BACKEND_WORDS = ("postgres", "_postgres", "PostgresStateBackend")


def _state_backend_mention(path: Path, text: str) -> bool:
    return path.relative_to(ROOT).as_posix() in STATE_BACKEND_FILES and (
        text in _STATE_BACKEND_WORDS
        or text.lower().startswith("postgres:")
        or "postgres state backend" in text
        or "s3 | postgres" in text
    )


POLICY_ABOVE = ("plan", "apply", "agent", "restore", "tape", "cli", "api", "browse", "provision", "state")


def test_the_policy_layer_imports_nothing_above_it() -> None:
    above = tuple(f"protectctl.{name}" for name in POLICY_ABOVE)
    offences = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path, tree in _modules("protectctl/policy")
        for line, name in _imports(tree)
        if name in above or name.startswith(tuple(f"{a}." for a in above))
    ]
    assert not offences, "\n".join(offences)


def test_no_module_outside_providers_names_postgresql() -> None:
    offences = []
    for path, tree in _modules("protectctl"):
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.arg):
                text = node.name if not isinstance(node, ast.arg) else node.arg
            if (
                text is not None
                and ("postgres" in text.lower() or text.lower().startswith("pg_"))
                and not _state_backend_mention(path, text)
            ):
                offences.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    assert not offences, "\n".join(offences)


def test_providers_import_only_the_provider_seam() -> None:
    offences = []
    for path, tree in _modules("providers"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from protectctl import errors` imports protectctl.errors
                names = [
                    node.module if node.module != "protectctl" else f"protectctl.{alias.name}" for alias in node.names
                ]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "protectctl" or name.startswith("protectctl.providers"):
                    continue  # the standard library, third parties, the provider's own package
                if name not in PROVIDER_ALLOWED:
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name}")
    assert not offences, "\n".join(offences)


def test_the_scan_sees_what_it_must_refuse(tmp_path: Path) -> None:
    """The checks above would catch the couplings this issue removed."""
    bad = ast.parse(
        "from protectctl.providers.postgresql import stream\n"
        "def f():\n    from protectctl.agent.archiver import Archiver\n"
        "x = 'postgresql'\n"
    )
    names = {name for _, name in _imports(bad)}
    assert "protectctl.providers.postgresql" in names and "protectctl.agent.archiver" in names
    assert any(isinstance(n, ast.Constant) and n.value == "postgresql" for n in ast.walk(bad))
