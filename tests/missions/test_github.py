"""GitHub issues as a mission source (github.py)."""
from __future__ import annotations

from tinytownd.missions.github import infer_kind, infer_role, parse_deps


def test_issue_parsing_word_boundaries():
    assert parse_deps("Depends on #1, #2 and o/x#3. Blocked by #4", "o", "r") == [
        ("o", "r", 1), ("o", "r", 2), ("o", "x", 3), ("o", "r", 4)]
    assert parse_deps("hereafter #3; thereafter #4", "o", "r") == []
    assert parse_deps("requires: #9", "o", "r") == [("o", "r", 9)]
    assert infer_kind("A specific build step") == "implement"
    assert infer_kind("Add integration tests") == "test"
    assert infer_kind("RFC: new storage") == "design"
    assert infer_role("Build the auth API", "implement") == "backend"
    assert infer_role("Build the suite", "implement") is None
    assert infer_role("x", "test") == "tester"
