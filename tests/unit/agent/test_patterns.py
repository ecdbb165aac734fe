"""gitignore-ish patterns (pure)."""

from __future__ import annotations

import pytest

from protectctl.agent.patterns import PathFilter, compile_pattern, validate_patterns


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        ("*.tmp", "a.tmp", False, True),
        ("*.tmp", "x/y/a.tmp", False, True),
        ("*.tmp", "a.tmpx", False, False),
        ("cache/", "cache", True, True),
        ("cache/", "x/cache", True, True),
        ("cache/", "cache", False, False),
        ("/build", "build", True, True),
        ("/build", "x/build", True, False),
        ("docs/*.md", "docs/a.md", False, True),
        ("docs/*.md", "docs/x/a.md", False, False),
        ("**/x", "x", False, True),
        ("**/x", "a/b/x", False, True),
        ("a/**", "a/b/c", False, True),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("file?.txt", "file1.txt", False, True),
        ("file[0-9].txt", "file7.txt", False, True),
        ("file[!0-9].txt", "file7.txt", False, False),
    ],
)
def test_match(pattern: str, path: str, is_dir: bool, expected: bool) -> None:
    compiled = compile_pattern(pattern)
    matched = bool(compiled.regex.match(path)) and (is_dir or not compiled.dirs_only)
    assert matched is expected


def test_negation_last_match_wins() -> None:
    f = PathFilter(exclude=["*.log", "!keep.log"])
    assert f.excluded("a.log", False)
    assert not f.excluded("keep.log", False)


def test_include_absent_means_all() -> None:
    assert PathFilter().included("anything", False)
    assert not PathFilter(include=["*.md"]).included("a.txt", False)


def test_validate_patterns() -> None:
    assert validate_patterns(["*.tmp", "ok/"], "exclude") == []
    assert len(validate_patterns(["", 3], "exclude")) == 2
