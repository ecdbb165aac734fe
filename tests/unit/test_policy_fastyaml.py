"""The fast YAML reader against ruamel, the reader of record.

Whatever fastyaml returns must be exactly what ruamel reads (values and their types); where it
cannot promise that it returns None and the loader asks ruamel. Checked on the shipped and
example policies, a generated 1,000-group policy, a table of plain scalars and random documents.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from protectctl.policy import fastyaml
from tests.bench.bench_plan import generate_policy

ROOT = Path(__file__).resolve().parents[2]


def _ruamel(text: str) -> list[Any] | Exception:
    """ruamel's reading, as the loader does it: the C parser, the pure one where libyaml refuses."""
    try:
        return list(YAML(typ="safe").load_all(text))
    except Exception:  # noqa: BLE001 - any refusal: the pure parser decides
        try:
            return list(YAML(typ="safe", pure=True).load_all(text))
        except Exception as err:  # noqa: BLE001 - compared below: fastyaml must defer then
            return err


def _typed(value: Any) -> Any:
    """The value with every scalar's type made visible (1 == 1.0 == True in Python)."""
    if isinstance(value, dict):
        return {_typed(k): _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _agrees(text: str) -> bool:
    """True when fastyaml read `text` (and read it as ruamel does); False when it deferred."""
    fast = fastyaml.load_all(text)
    if fast is None:
        return False
    ref = _ruamel(text)
    assert not isinstance(ref, Exception), f"fastyaml read text ruamel refuses ({ref}): {text!r}"
    assert _typed(fast) == _typed(ref), text
    return True


def test_shipped_and_example_policies_are_read_fast_and_alike() -> None:
    files = sorted((ROOT / "policies").glob("*.yaml")) + sorted((ROOT / "examples").rglob("*.yaml"))
    assert files
    for file in files:
        assert _agrees(file.read_text(encoding="utf-8")), file


def test_generated_big_policy_is_read_fast_and_alike(tmp_path: Path) -> None:
    directory = generate_policy(tmp_path / "policy", groups=30, members=3, files=2)
    for file in sorted(directory.rglob("*.yaml")):
        assert _agrees(file.read_text(encoding="utf-8")), file


PLAIN = [
    "yes",
    "on",
    "No",
    "~",
    "null",
    "NULL",
    "True",
    "false",
    "0755",
    "0o17",
    "0x1F",
    "-0",
    "+12",
    "00",
    "1.",
    ".5",
    "-.5",
    "+.5",
    "1e5",
    "1E+5",
    "1e+05",
    "1.5e-3",
    "-1E5",
    ".5e3",
    ".5e+3",
    "+.inf",
    ".Inf",
    "-.INF",
    ".nan",
    ".NaN",
    "-.nan",
    "0b101",
    "+0x1F",
    "-0x1",
    "-0o7",
    "1_000",
    "1_000.5",
    "0o1_7",
    "1__",
    "0_",
    ".1_0",
    "1_0e3",
    "0x_1",
    "0.5e",
    "12e",
    "0x",
    "0o",
    "0o8",
    "0xG",
    "0XFF",
    "1e",
    "1.2.3",
    "1e5_0",
    "_1",
    "1:30",
    "12:30:00",
    "1,000",
    "2024-01-01",
    "2024-1-1x",
    "10GB",
    "5%/day",
    "./data",
    "-C",
    "=",
    "<<",
    "+",
    ".",
]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_scalars_as_ruamel_reads_them(text: str) -> None:
    _agrees(f"k: {text}\nl: [{text}]\n")


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # anchors and aliases
        "a: !!str 1\n",  # tags
        "%YAML 1.1\n---\na: yes\n",  # a directive that changes how scalars resolve
        "a: 1\na: 2\n",  # duplicate keys: ruamel reports them, with their position
        "<<: {a: 1}\nb: 2\n",  # merge keys
        "? [a]\n: b\n",  # a collection as a key
        "~: x\n",  # a null key
        "when: 2024-01-01\n",  # timestamps
        "a: [1, 2\n",  # syntax errors: ruamel reports them
    ],
)
def test_defers_what_it_might_read_differently(text: str) -> None:
    assert fastyaml.load_all(text) is None


# Text libyaml reads but ruamel refuses or reads otherwise (found by the random-text test below).
DISPUTED = [
    "0\t",  # a tab after a plain scalar: [0] to libyaml, a ScannerError to ruamel
    "a: 0\t\n",
    "a:\t1\n",
    "a\t: b\n",
    "- a\t\n",
    "a: b\t#c\n",
    "0\t#\n",
    "a: 'x\ty'\n",  # a tab anywhere defers, even where both agree: tabs are rare in policies
    "|#",
    ">#1",
    "|-#\n  a\n",
    "a: >2#\n  x\n",  # a block scalar header followed by `#`
    "|\n#x",
    "|\r#",
    "|\n#>-1",  # a block scalar as the whole document: `#x` is content to ruamel
    "\ufeff\ufeff",
    "\x85\ufeff0",
    "a: b\ufeffc\n",  # a byte order mark past the start
    "a: \x85b\n",
    "\u2028a: 1\n",
    "a: 1\u2029b: 2\n",  # YAML 1.1 line breaks (NEL, LS, PS)
]


@pytest.mark.parametrize("text", DISPUTED)
def test_defers_text_the_parsers_read_differently(text: str) -> None:
    assert fastyaml.load_all(text) is None
    _agrees(text)


@pytest.mark.parametrize("text", ["\ufeffa: 1\n", "a: |  # note\n  x\n", "a: |\n  x\n# c\nb: é\n"])
def test_reads_what_both_read_alike(text: str) -> None:
    assert _agrees(text), text


def test_documents_and_empty_ones() -> None:
    assert fastyaml.load_all("") == []
    assert fastyaml.load_all("--- 1\n---\n--- [a, {b: 'c'}]\n") == [1, None, ["a", {"b": "c"}]]
    assert fastyaml.load_all("a: |\n  x\nb: >\n  y\n  z\n") == [{"a": "x\n", "b": "y z\n"}]


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=True),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
    st.sampled_from(PLAIN),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values, st.sampled_from([None, True, False]))
def test_random_documents_read_alike(value: Any, flow: bool | None) -> None:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = flow
    stream = io.StringIO()
    yaml.dump(value, stream)
    _agrees(stream.getvalue())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab:-[]{}'\"#&*!|>?,.01 \n\t\r~\\%\ufeff\x85\u2028", max_size=40))
@example("0\t")
@example("|\n#x")
def test_random_text_is_read_alike_or_deferred(text: str) -> None:
    _agrees(text)


def test_a_tab_the_fast_path_once_took_is_reported_on_its_line(tmp_path: Path) -> None:
    """`0<TAB>` as a document on line 6: once read as the number 0 (and reported at 1:1 as a
    document that is not a mapping); now ruamel reads it and reports its syntax error there."""
    from protectctl.errors import PolicyError
    from protectctl.policy.load import load_policy

    host = "apiVersion: protectctl/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n---\n"
    (tmp_path / "protect.yaml").write_text(host + "0\t\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.location is not None and diagnostic.location.line == 6, diagnostic
    assert "YAML syntax" in diagnostic.summary, diagnostic
