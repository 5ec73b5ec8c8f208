"""tt's ranking of agents for a mission work item: the agent's lane (from its role, else its
name), a score per work-item kind and lane, the owner-role match (store/fit.py role_matches) and
the mismatch table, and a penalty per item the agent already got in this tick. An agent with a
score of 0 or less does not take the item. Pure.
"""
from __future__ import annotations

from tinytownd.store.fit import normalize_role, role_matches

LOAD_PENALTY = 30

GENERALIST, BACKEND, FRONTEND, TESTER, REVIEWER, DEVOPS, RUNNER, RESEARCHER = (
    "generalist", "backend", "frontend", "tester", "reviewer", "devops", "runner", "researcher")

_ROLE_LANES = {"backend": BACKEND, "frontend": FRONTEND, "tester": TESTER, "test": TESTER,
               "reviewer": REVIEWER, "review": REVIEWER, "audit": REVIEWER, "devops": DEVOPS,
               "infra": DEVOPS, "runner": RUNNER, "researcher": RESEARCHER,
               "default": GENERALIST, "worker": GENERALIST}
_NAME_LANES = ((("review", "audit"), REVIEWER), (("test", "qa"), TESTER),
               (("backend", "api", "server"), BACKEND),
               (("frontend", "ui", "web", "client"), FRONTEND),
               (("devops", "infra", "deploy"), DEVOPS), (("runner", "ci"), RUNNER),
               (("research", "explore"), RESEARCHER))
# kind table: kind -> lane -> score (no owner_role)
_SPECIALIST = (BACKEND, FRONTEND, DEVOPS)
KIND_TABLE = {
    "implement": {GENERALIST: 60, RESEARCHER: 35, RUNNER: 35, TESTER: 5, REVIEWER: 0},
    "test": {GENERALIST: 45, RESEARCHER: 30, RUNNER: 30, TESTER: 85, REVIEWER: 10},
    "review": {GENERALIST: 20, RESEARCHER: 35, RUNNER: 5, TESTER: 5, REVIEWER: 100},
    "design": {GENERALIST: 55, RESEARCHER: 75, RUNNER: 20, TESTER: 10, REVIEWER: 30},
    "mergegate": {GENERALIST: 35, RESEARCHER: 20, RUNNER: 80, TESTER: 10, REVIEWER: 50},
    "followup": {GENERALIST: 50, RESEARCHER: 50, RUNNER: 35, TESTER: 20, REVIEWER: 10},
}
_SPECIALIST_KIND = {"implement": 60, "test": 45, "review": 5, "design": 55, "mergegate": 35,
                    "followup": 50}

KNOWN_ROLES = frozenset(set(_ROLE_LANES) | {"qa"})


def lane(agent: dict) -> str:
    rid = (agent.get("role_id") or "").strip().lower()
    if rid and rid in _ROLE_LANES:
        return _ROLE_LANES[rid]
    name = (agent.get("name") or "").lower()
    for subs, ln in _NAME_LANES:
        if any(s in name for s in subs):
            return ln
    return GENERALIST


def kind_score(kind: str, ln: str) -> int:
    if ln in _SPECIALIST:
        return _SPECIALIST_KIND.get(kind, 60)
    return KIND_TABLE.get(kind, KIND_TABLE["implement"]).get(ln, 0)


def base_score(kind: str, owner_role: str | None, agent: dict) -> int:
    ln = lane(agent)
    if kind == "review" and ln == REVIEWER:
        return 120
    if owner_role:
        role = owner_role.strip().lower()
        if role_matches(agent, role):
            return 100
        norm = normalize_role(role)
        if norm in ("backend", "frontend", "devops"):
            return {GENERALIST: 55, BACKEND: 35, FRONTEND: 35, DEVOPS: 35, RESEARCHER: 20,
                    RUNNER: 20, TESTER: 5 if kind == "implement" else 15, REVIEWER: 0}[ln]
        if norm == "tester":
            return {GENERALIST: 45, BACKEND: 30, FRONTEND: 30, DEVOPS: 30, RESEARCHER: 20,
                    RUNNER: 20, TESTER: 100, REVIEWER: 5}[ln]
        if norm == "reviewer":
            return {GENERALIST: 10, BACKEND: 0, FRONTEND: 0, DEVOPS: 0, RESEARCHER: 20,
                    RUNNER: 0, TESTER: 0, REVIEWER: 100}[ln]
    return kind_score(kind, ln)


def score(kind: str, owner_role: str | None, agent: dict, given_this_tick: int = 0) -> int:
    return base_score(kind, owner_role, agent) - LOAD_PENALTY * given_this_tick


def is_reviewer(agent: dict) -> bool:
    rid = (agent.get("role_id") or "").strip().lower()
    if rid:
        return rid in ("reviewer", "review", "audit")
    name = (agent.get("name") or "").lower()
    return "review" in name or "audit" in name
