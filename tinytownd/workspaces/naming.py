"""Names of a task's workspace, pure: the branch from its pattern, the worktree's path, the
commit message and author, and git's rules for a valid branch name.

Placeholders of `workspace.branch`:
  {town} {task} {task_short} {slug} {agent} {batch} {item}
Values are made ref-safe before they go in (`part`); what the pattern itself says is checked
with the whole name (`ref_problem`), so a pattern with a space or `..` is refused for every task.
"""
from __future__ import annotations

import os
import re
import string
import unicodedata

PLACEHOLDERS = ("town", "task", "task_short", "slug", "agent", "batch", "item")
SLUG_MAX = 40
SUBJECT_MAX = 72
SAMPLE = {"town": "tinytown", "task": "0f6c1c9e-5e0b-4c52-9d3e-2f4a8b6c7d10",
          "task_short": "0f6c1c9e", "slug": "sample-task", "agent": "worker-1",
          "batch": "20260101-000000-abcdef", "item": "item-1"}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def slug(text: str, max_len: int = SLUG_MAX) -> str:
    """The first line of a description as lowercase ASCII words joined by '-' (a leading
    `[tag]` dropped), cut at a word boundary; "task" when nothing is left."""
    line = (text or "").strip().split("\n", 1)[0]
    line = re.sub(r"^\s*\[[^\]]*\]\s*", "", line)
    line = unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode()
    s = re.sub(r"[^a-z0-9]+", "-", line.lower()).strip("-")
    if len(s) > max_len:
        cut = s[:max_len + 1]
        s = cut[:cut.rfind("-")] if "-" in cut[1:] else s[:max_len]
    return s.strip("-") or "task"


def part(value: str | None) -> str:
    """A placeholder's value, ref-safe: runs of other characters become '-'."""
    s = _UNSAFE.sub("-", str(value or "")).strip("-.")
    return s.replace("..", "-")


def placeholders(pattern: str) -> list[str]:
    """The placeholder names of a pattern (ValueError for a malformed one, e.g. a lone '{')."""
    names = []
    for _lit, field, spec, conv in string.Formatter().parse(pattern):
        if field is None:
            continue
        if spec or conv or not field.isidentifier():
            raise ValueError(f"{{{field}{'!' + conv if conv else ''}"
                             f"{':' + spec if spec else ''}}} is not a placeholder "
                             f"(use {', '.join('{%s}' % p for p in PLACEHOLDERS)})")
        names.append(field)
    return names


def render(pattern: str, values: dict) -> str:
    """The branch name for `values` (missing ones are empty; '//' and stray '/' are dropped)."""
    safe = {k: part(values.get(k)) for k in PLACEHOLDERS}
    name = pattern.format_map(safe)
    name = re.sub(r"/{2,}", "/", name).strip("/")
    name = re.sub(r"-{2,}", "-", name)
    return "/".join(c.strip("-") or "x" for c in name.split("/"))


def ref_problem(name: str) -> str | None:
    """Why `name` is not a valid branch name (git check-ref-format --branch), or None."""
    if not name:
        return "is empty"
    if name.startswith("-"):
        return "must not start with '-'"
    if name == "@" or "@{" in name:
        return "must not be '@' or contain '@{'"
    m = _BAD_CHARS.search(name)
    if m:
        return f"must not contain {m.group()!r} (spaces, control characters, ~ ^ : ? * [ \\)"
    if ".." in name:
        return "must not contain '..'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "must not start or end with '/' or contain '//'"
    if name.endswith("."):
        return "must not end with '.'"
    for c in name.split("/"):
        if c.startswith("."):
            return f"a part must not start with '.' ({c!r})"
        if c.endswith(".lock"):
            return f"a part must not end with '.lock' ({c!r})"
    return None


def pattern_problem(pattern: str, sample: dict | None = None) -> str | None:
    """Why a `workspace.branch` pattern cannot name branches (unknown placeholder, malformed, or
    not a valid ref for a sample task), or None."""
    try:
        names = placeholders(pattern)
    except ValueError as e:
        return str(e)
    unknown = [n for n in names if n not in PLACEHOLDERS]
    if unknown:
        return (f"unknown placeholder {{{unknown[0]}}} (known: "
                f"{', '.join('{%s}' % p for p in PLACEHOLDERS)})")
    name = render(pattern, {**SAMPLE, **(sample or {})})
    why = ref_problem(name)
    return None if why is None else f"gives {name!r} for a sample task, which {why}"


def values(*, town: str, task_id: str, description: str, agent: str, batch: str | None,
           item: str | None) -> dict:
    """The placeholder values of one task."""
    return {"town": town, "task": task_id, "task_short": task_id[:8], "slug": slug(description),
            "agent": agent, "batch": batch or "", "item": item or ""}


def worktree_path(dir_: str, task_id: str) -> str:
    """Where a task's worktree lives: one directory per task, named by its id."""
    return os.path.join(dir_, part(task_id) or "task")


def inside(path: str, dir_: str) -> bool:
    """`path` is strictly below `dir_` (both resolved): the only places ever deleted."""
    p, d = os.path.realpath(path), os.path.realpath(dir_)
    return p != d and p.startswith(d.rstrip(os.sep) + os.sep)


def commit_message(description: str, task_id: str, agent: str) -> str:
    """The subject (the description's first line, at most 72 characters), the rest of the
    description, and trailers naming the task and the agent."""
    desc = (description or "").strip()
    first, _, rest = desc.partition("\n")
    subject = " ".join(first.split()) or f"Task {task_id}"
    if len(subject) > SUBJECT_MAX:
        cut = subject[:SUBJECT_MAX - 1]
        subject = (cut[:cut.rfind(" ")] if " " in cut else cut).rstrip() + "…"
    body = desc if len(" ".join(first.split())) > SUBJECT_MAX else rest.strip()
    msg = subject + "\n"
    if body:
        msg += "\n" + body + "\n"
    return msg + f"\nTinytown-Task: {task_id}\nTinytown-Agent: {agent}\n"


def author(agent: str, town: str) -> dict:
    """Author and committer of an automatic commit: the agent (its name), by tinytownd."""
    mail = f"{part(agent) or 'agent'}@{part(town) or 'town'}.tinytown.invalid"
    return {"GIT_AUTHOR_NAME": agent, "GIT_AUTHOR_EMAIL": mail,
            "GIT_COMMITTER_NAME": "tinytownd", "GIT_COMMITTER_EMAIL": f"tinytownd@{mail.split('@')[1]}"}
