"""Which agent may take which task: the one definition of each fit rule.

The tag rule (backlog claims, batch hand-outs, batch-file checks): a task fits an agent when it
has no tags, or one of its tags is one of the agent's words: its role, `role:<role>`, its name, or
one of its configured tags. `lua/claim_backlog.lua` applies the same rule inside Redis (a task
whose tags field is not a JSON list counts as untagged there); tests/store/test_fit.py checks that
the two agree on a table of cases.

The role rule (mission work items with an `owner_role`, tt's scheduler): an agent matches a role
when its role normalises to the same name (`test` = `tester`, `review`/`audit` = `reviewer`,
`infra` = `devops`), or, for an agent without a role, when its name contains one of the role's
words. missions/scoring.py ranks the agents that a work item may go to with it.
"""
from __future__ import annotations

from typing import Iterable

_ROLE_ALIASES = {"test": "tester", "review": "reviewer", "audit": "reviewer", "infra": "devops"}
_ROLE_NAME_WORDS = {"backend": ("backend", "api", "server"),
                    "frontend": ("frontend", "ui", "web", "client"),
                    "tester": ("test", "qa"), "reviewer": ("review", "audit"),
                    "devops": ("devops", "infra", "deploy")}


def agent_words(role: str | None, name: str, tags: Iterable[str] = ()) -> frozenset[str]:
    """The words a task tag is matched against (the claim script receives them as ARGV)."""
    role = role or "worker"
    return frozenset((role, f"role:{role}", name, *map(str, tags)))


def task_fits(task_tags: Iterable[str], words: frozenset[str] | set[str]) -> bool:
    """The tag rule: no tags, or one tag among the agent's words."""
    tags = tuple(task_tags or ())
    return not tags or any(t in words for t in tags)


def role_tags(tags: Iterable[str], role: str | None) -> list[str]:
    """A task's tags with its required role as the `role:<role>` tag (how a role reaches the
    tag rule)."""
    out = list(tags)
    if role and f"role:{role}" not in out:
        out.append(f"role:{role}")
    return out


def normalize_role(role: str) -> str:
    r = role.strip().lower()
    return _ROLE_ALIASES.get(r, r)


def role_matches(agent: dict, role: str) -> bool:
    """The role rule for an agent record (role_id, name)."""
    norm = normalize_role(role)
    rid = agent.get("role_id")
    if rid:
        return normalize_role(rid) == norm
    name = (agent.get("name") or "").lower()
    words = _ROLE_NAME_WORDS.get(norm)
    if words:
        return any(w in name for w in words)
    return norm in name
