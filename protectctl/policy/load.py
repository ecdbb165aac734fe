"""Load a policy directory: YAML files → validated documents, or one PolicyError.

Effects: reads files. Every problem becomes a `Diagnostic` naming file:line:col, what is
wrong and what would be right; all problems of a run are raised together.

Speed: timers run the CLI every few minutes on every host, and policies of a thousand
groups must validate in well under a second, so files are read by `fastyaml` (libyaml),
and ruamel (the reader of record) is imported and used only for what fastyaml defers, and
when a file has problems, to find the line and column of each one (`Locator`).
"""

from __future__ import annotations

import difflib
import errno
import os
import stat
import types
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from protectctl.errors import Diagnostic, Location, PolicyError, Severity
from protectctl.policy import fastyaml
from protectctl.policy.document import DocRef, Document, KeyPath, Policy, Problem
from protectctl.policy.model import Header, Kind, spec_model_for
from protectctl.policy.rules import check_rules

__all__ = [  # the types are policy/document.py's, named here too for the callers that load
    "GENERATED_KINDS",
    "MAX_FILE_BYTES",
    "DocRef",
    "Document",
    "KeyPath",
    "Policy",
    "Problem",
    "load_policy",
    "policy_files",
    "read_policy_file",
    "resolve",
]

if typing.TYPE_CHECKING:
    from ruamel.yaml.error import MarkedYAMLError

# A policy file bigger than this is refused unread: a 1,000-group policy is 0.4 MB in all
# (tests/bench/bench_plan.py), and a symlink to /dev/zero once read until MemoryError.
MAX_FILE_BYTES = 16 << 20
GENERATED_KINDS = frozenset({"AgentConfig", "SourceConfig"})  # written by apply on hosts
SKIP_DIRS = frozenset({".git", ".protectctl", "node_modules", "__pycache__", ".venv"})


class Locator:
    """Turns (file, document index, key path) into a 1-based line:col, parsing lazily."""

    def __init__(self) -> None:
        self._docs: dict[Path, list[Any]] = {}

    def locate(self, ref: DocRef, path: KeyPath) -> Location:
        docs = self._load(ref.file)
        if ref.index >= len(docs):
            return Location(ref.file, 1, 1)
        node: Any = docs[ref.index]
        line, col = self._start(node) if getattr(node, "lc", None) is not None else self._doc_start(ref)
        for key in path:
            found = self._child(node, key)
            if found is None:
                break
            node, (line, col) = found
        return Location(ref.file, line + 1, col + 1)

    def _load(self, file: Path) -> list[Any]:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        if file not in self._docs:
            try:
                self._docs[file] = list(YAML(typ="rt").load_all(read_policy_file(file)))
            except (YAMLError, _Unreadable, RecursionError, ValueError, AssertionError):
                self._docs[file] = []
        return self._docs[file]

    @staticmethod
    def _doc_start(ref: DocRef) -> tuple[int, int]:
        """Where a document without positions of its own (a scalar, say) starts."""
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            nodes = list(YAML(typ="rt").compose_all(read_policy_file(ref.file)))
            mark = nodes[ref.index].start_mark
            return mark.line, mark.column
        except (YAMLError, _Unreadable, RecursionError, ValueError, IndexError, AttributeError, AssertionError):
            return 0, 0

    @staticmethod
    def _start(node: Any) -> tuple[int, int]:
        lc = getattr(node, "lc", None)
        return (lc.line, lc.col) if lc is not None and lc.line is not None else (0, 0)

    @staticmethod
    def _child(node: Any, key: str | int) -> tuple[Any, tuple[int, int]] | None:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and key in node and lc is not None:
            child = node[key]
            pos = lc.value(key) if not isinstance(child, dict | list) else lc.key(key)
            return child, tuple(pos)
        if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node) and lc is not None:
            return node[key], tuple(lc.item(key))
        return None


def policy_files(policy_dir: Path) -> list[Path]:
    """Every *.yaml / *.yml under the directory, recursively, in a stable order.

    Hidden and tool directories are pruned, not walked: the quick start keeps its repository
    (thousands of pack files after a while) under ./.protectctl. Hidden files are skipped too
    (a policy repository's .gitlab-ci.yml is no policy).
    """
    found: list[Path] = []
    for top, dirs, files in os.walk(policy_dir):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        found += [Path(top, f) for f in files if f.endswith((".yaml", ".yml")) and not f.startswith(".")]
    return sorted(found)


def load_policy(policy_dir: Path, *, allow_empty: bool = False) -> Policy:
    """Load and validate the documents of a directory; raises PolicyError with every problem.

    A directory whose files hold no document is an error unless `allow_empty` (destroy: the
    policy is gone, what apply made must go too)."""
    try:
        policy_dir = policy_dir.resolve()
    except OSError as err:  # e.g. `-C .` inside a directory that was deleted
        raise PolicyError(
            [
                Diagnostic(
                    Severity.ERROR,
                    f"cannot open policy directory {policy_dir}: {err.strerror}",
                    detail="pass -C DIR with an existing directory",
                )
            ]
        ) from None
    if not policy_dir.is_dir():
        raise PolicyError([Diagnostic(Severity.ERROR, f"policy directory {policy_dir} does not exist")])
    files = policy_files(policy_dir)
    if not files:
        raise PolicyError(
            [
                Diagnostic(
                    Severity.ERROR,
                    f"no policy documents (*.yaml) in {policy_dir}",
                    detail="run in a policy directory or pass -C DIR",
                )
            ]
        )
    policy = Policy(root=policy_dir)
    problems: list[Problem] = []
    syntax: list[Diagnostic] = []
    seen = sum(_load_file(file, policy, problems, syntax) for file in files)
    if not seen and not syntax and not allow_empty:
        # Empty files (or nothing but `---`) are no policy: read as one, apply would remove
        # every timer and agent config that an earlier policy made.
        syntax.append(
            Diagnostic(
                Severity.ERROR,
                f"the policy has no documents: {len(files)} file(s) under {policy_dir}, all empty",
                Location(files[0], 1, 1),
                "write its documents, as in examples/quickstart/protect.yaml; to remove "
                "everything apply made, run `protectctl destroy`",
            )
        )
    _add_shipped(policy)
    problems.extend(check_rules(policy))
    diagnostics = syntax + resolve(problems)
    if any(d.severity is Severity.ERROR for d in diagnostics):
        raise PolicyError(diagnostics)
    policy.warnings = tuple(diagnostics)
    return policy


def resolve(problems: Sequence[Problem]) -> list[Diagnostic]:
    locator = Locator()
    return [Diagnostic(p.severity, p.summary, locator.locate(p.ref, p.path), p.detail) for p in problems]


class _Unreadable(Exception):
    """A policy file that must not or cannot be read; the message says why."""


def read_policy_file(file: Path) -> str:
    """The text of one policy file; raises _Unreadable for anything but a regular UTF-8 file of
    at most MAX_FILE_BYTES (a FIFO would block the loader, a device never end)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise _Unreadable(f"cannot open: {err.strerror}") from None
    try:
        st = os.fstat(fd)  # of what was opened: no race with a rename or a new symlink
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable(f"not a regular file ({_file_type(st.st_mode)}); a policy file must be one")
        if st.st_size > MAX_FILE_BYTES:
            raise _Unreadable(f"{st.st_size:,} bytes, more than the {MAX_FILE_BYTES >> 20} MiB a policy file may hold")
        data = _read_at_most(fd, MAX_FILE_BYTES + 1)
    except OSError as err:
        raise _Unreadable(f"cannot read: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew while we read
        raise _Unreadable(f"more than the {MAX_FILE_BYTES >> 20} MiB a policy file may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Unreadable(f"not UTF-8 text (byte {err.start}: {err.reason})") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, min(1 << 20, limit - size))
        except BlockingIOError:  # O_NONBLOCK on a regular file never blocks; be safe anyway
            raise OSError(errno.EAGAIN, "the file would block") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _load_file(file: Path, policy: Policy, problems: list[Problem], syntax: list[Diagnostic]) -> int:
    """Load one file's documents into `policy`; returns how many policy documents it holds
    (valid or not; empty ones and what apply generated not counted)."""
    try:
        text = read_policy_file(file)
    except _Unreadable as err:
        syntax.append(
            Diagnostic(
                Severity.ERROR,
                f"cannot read policy file: {err}",
                Location(file, 1, 1),
                "policy files are regular UTF-8 YAML files",
            )
        )
        return 0
    raw_docs = fastyaml.load_all(text)
    if raw_docs is None:
        raw_docs = _parse_or_report(file, text, syntax)
        if raw_docs is None:
            return 0
    seen = 0
    may_hold_nul = "\\" in text  # only a double-quoted escape (`"\0"`) can make a NUL
    for index, raw in enumerate(raw_docs):
        if raw is None:
            continue
        seen += 1
        ref = DocRef(file, index)
        if not isinstance(raw, dict):
            problems.append(
                Problem(
                    ref,
                    (),
                    f"a document must be a mapping, not {_type_name(raw)}",
                    "expected apiVersion, kind, metadata and spec",
                )
            )
            continue
        kind = raw.get("kind")
        if isinstance(kind, str) and kind in GENERATED_KINDS:
            seen -= 1
            continue  # a host root inside the policy directory: what apply wrote is not policy
        if may_hold_nul and _nul_problems(raw, ref, (), problems):
            continue
        doc = _validate_document(raw, ref, problems, policy.broken)
        if doc is not None:
            _register(policy, doc, problems)
    return seen


def _nul_problems(node: Any, ref: DocRef, path: KeyPath, problems: list[Problem]) -> bool:
    """Report every key or value holding a NUL character; True when there was one.

    No path, name, pattern or command can hold a NUL (the OS takes them as C strings): once a
    member path `/srv/a\\0b` passed validate, plan and apply, and every sync then failed."""
    found = False
    if isinstance(node, str):
        if "\0" in node:
            problems.append(
                Problem(
                    ref,
                    path,
                    f"`{_dotted(path) or 'value'}` contains a NUL character (\\0)",
                    "no path, name, pattern or command can hold one; remove it",
                )
            )
            return True
        return False
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and "\0" in key:
                problems.append(
                    Problem(
                        ref,
                        path,
                        f"a key in `{_dotted(path) or 'the document'}` contains a NUL character (\\0)",
                        "remove it",
                    )
                )
                found = True
            found = _nul_problems(value, ref, (*path, key), problems) or found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _nul_problems(value, ref, (*path, index), problems) or found
    return found


def _parse_or_report(file: Path, text: str, syntax: list[Diagnostic]) -> list[Any] | None:
    """The documents of a text fastyaml deferred, or None with the syntax error added to `syntax`."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return _parse_with_ruamel(text)
    except MarkedYAMLError as err:
        syntax.append(_yaml_diagnostic(file, err))
    except (YAMLError, RecursionError, ValueError) as err:
        syntax.append(Diagnostic(Severity.ERROR, f"cannot read YAML: {err}", Location(file, 1, 1)))
    except AssertionError as err:  # ruamel asserts what it cannot read, e.g. `%YAML 1.3`
        syntax.append(_unsupported_yaml(file, text, err))
    return None


def _unsupported_yaml(file: Path, text: str, err: AssertionError) -> Diagnostic:
    """ruamel's assertion about a construct it does not support, located at a `%YAML` directive
    when there is one (the known case)."""
    import re

    match = re.search(r"^%YAML[ \t]+(\S*)", text, re.MULTILINE)
    if match is not None:
        line = text.count("\n", 0, match.start()) + 1
        return Diagnostic(
            Severity.ERROR,
            f"unsupported YAML version {match.group(1)!r}",
            Location(file, line, 1),
            "policies are YAML 1.2: write `%YAML 1.2` or leave the directive out",
        )
    return Diagnostic(Severity.ERROR, f"cannot read YAML: {err or 'unsupported construct'}", Location(file, 1, 1))


def _parse(text: str) -> list[Any]:
    """All documents of a file: fastyaml's reading, or ruamel's where fastyaml defers."""
    fast = fastyaml.load_all(text)
    return fast if fast is not None else _parse_with_ruamel(text)


def _parse_with_ruamel(text: str) -> list[Any]:
    """ruamel's C parser, or its pure one where libyaml falls short.

    libyaml refuses some valid YAML 1.2 that the round-trip locator accepts, e.g. a ':' inside a
    flow-mapping plain scalar (`tape: {schedule: weekly on sun at 02:00}`, the DESIGN example);
    the pure parser then decides, and its error (if any) is the one reported.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    try:
        return list(YAML(typ="safe").load_all(text))
    except MarkedYAMLError:
        return list(YAML(typ="safe", pure=True).load_all(text))


def _add_shipped(policy: Policy) -> None:
    """Shipped tiers (policies/*.yaml) are available by name unless the user defines them."""
    try:
        pkg = resources.files("protectctl.policies")
    except ModuleNotFoundError:
        return
    for entry in sorted(pkg.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        path = Path(str(entry))
        for index, raw in enumerate(_parse(entry.read_text(encoding="utf-8"))):
            if not isinstance(raw, dict):
                continue
            doc = _validate_document(raw, DocRef(path, index, shipped=True), [])
            if doc is None or (doc.kind, doc.name) in policy.broken:
                continue  # a user's SLA of that name overrides the shipped one, even when it is wrong
            if policy.get(doc.kind, doc.name) is None:
                policy.documents.setdefault(doc.kind, {})[doc.name] = doc


def _register(policy: Policy, doc: Document, problems: list[Problem]) -> None:
    by_name = policy.documents.setdefault(doc.kind, {})
    first = by_name.get(doc.name)
    if first is not None:
        problems.append(
            Problem(
                doc.ref,
                ("metadata", "name"),
                f"duplicate {doc.kind.value} name {doc.name!r}",
                f"first defined in {first.ref.file}; names are unique per kind",
            )
        )
        return
    by_name[doc.name] = doc


def _validate_document(
    raw: dict[Any, Any], ref: DocRef, problems: list[Problem], broken: set[tuple[Kind, str]] | None = None
) -> Document | None:
    try:
        header = Header.model_validate(raw)
    except ValidationError as err:
        problems.extend(_from_validation(err, ref, (), Header, raw))
        return None
    model = spec_model_for(header.kind, header.spec, narrow=True)  # only the providers it names load
    try:
        try:
            spec = model.model_validate(header.spec)
        except ValidationError:
            full = spec_model_for(header.kind, header.spec)
            if full is model:
                raise
            model = full  # its errors are the ones to report (e.g. the kinds a member may name)
            spec = model.model_validate(header.spec)
    except ValidationError as err:
        problems.extend(_from_validation(err, ref, ("spec",), model, header.spec))
        if broken is not None:
            broken.add((header.kind, header.metadata.name))
        return None
    return Document(header.kind, header.metadata, spec, ref)


def _from_validation(
    err: ValidationError, ref: DocRef, prefix: KeyPath, model: type[BaseModel], raw: object
) -> list[Problem]:
    problems = []
    items = err.errors(include_url=False)
    for item in items:
        if _cascade(item, items):
            continue
        loc = _user_path(raw, item["loc"])
        path = prefix + loc
        summary, detail = _explain(item, loc, model)
        problems.append(Problem(ref, path, summary, detail))
    return problems


def _cascade(item: Any, items: Sequence[Any]) -> bool:
    """An error that only follows from another one: pydantic reports a sequence as too short when
    one of its items failed (a misspelled `filesytem:` is not also "needs at least one member")."""
    if item["type"] != "too_short":
        return False
    where = tuple(item["loc"])
    return any(len(other["loc"]) > len(where) and tuple(other["loc"][: len(where)]) == where for other in items)


def _user_path(raw: object, loc: Sequence[str | int]) -> KeyPath:
    """pydantic's error location without its validator tags; a key present in the input is
    always kept (a user's key may well contain '[')."""
    out: list[str | int] = []
    node: Any = raw
    for part in loc:
        in_map = isinstance(node, dict) and part in node
        in_list = isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node)
        if in_map or in_list:
            node = node[part]
        elif _is_tag(part):
            continue
        else:
            node = None  # e.g. a missing field: keep it, nothing below it to follow
        out.append(part)
    return tuple(out)


def _is_tag(part: object) -> bool:
    # pydantic adds validator names ("function-after[...]") for unions and validators
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _explain(item: Any, loc: KeyPath, model: type[BaseModel]) -> tuple[str, str | None]:
    """A pydantic error as (what is wrong, what would be right)."""
    kind = item["type"]
    where = _dotted(loc)
    message = str(item["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        field_name = str(loc[-1]) if loc else "?"
        return f"missing required field `{field_name}`", f"add `{field_name}:` here"
    if kind == "extra_forbidden":
        unknown = str(loc[-1])
        allowed = _allowed_fields(model, loc[:-1])
        close = difflib.get_close_matches(unknown, allowed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"unknown field `{unknown}`", hint + (f"expected one of: {', '.join(allowed)}" if allowed else "")
    if (
        kind == "string_pattern_mismatch"
        and loc
        and loc[-1] in ("name", "host", "sla", "storage", "key", "library", "pool", "gateway")
    ):
        return (
            f"`{where}`: {item.get('input')!r} is not a valid name",
            "use lower-case letters, digits and '-', starting and ending with a letter or digit",
        )
    if kind == "literal_error" and loc == ("apiVersion",):
        return f"unsupported apiVersion {item.get('input')!r}", "use `apiVersion: protectctl/v1`"
    if kind == "enum" and loc == ("kind",):
        kinds = ", ".join(k.value for k in Kind)
        return f"unknown kind {item.get('input')!r}", f"expected one of: {kinds}"
    if kind == "too_short" and loc and loc[-1] == "members":
        return "a protection group needs at least one member", "add `members:` with name, host and a data source"
    return (f"`{where}`: {message}" if where else message), None


def _allowed_fields(model: type[BaseModel], path: KeyPath) -> list[str]:
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        target = None
        for name, info in current.model_fields.items():
            if part in (name, info.alias):
                target = _model_in(info.annotation)
        current = target
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _type_name(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _yaml_diagnostic(file: Path, err: MarkedYAMLError) -> Diagnostic:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = err.problem or "invalid YAML"
    context = f" ({err.context})" if err.context else ""
    detail = (
        "keys must be unique within a mapping"
        if "duplicate key" in str(err)
        else ("check indentation, quoting and brackets")
    )
    return Diagnostic(Severity.ERROR, f"YAML syntax: {problem}{context}", Location(file, line, col), detail)
