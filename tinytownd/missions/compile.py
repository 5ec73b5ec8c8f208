"""Mission file (YAML) → validated work graph → tt records.

    objective: "free text"
    policy: {max_parallel_items: 2, reviewer_required: false, watch_interval_secs: 180,
             max_attempts: 3, max_cost_usd: 5.0}     # max_cost_usd: missions/budget.py
    work_items:
      - id: api                 # unique in the file; stored as a UUID work item, file id kept
        title: Build the API    # default: the id
        kind: implement         # design|implement|test|review|mergegate (or merge_gate)|followup
        owner_role: worker      # optional; must be a role tinytownd knows (see known_roles)
        depends_on: [schema]    # file ids
        description: "what the agent is told"
        watches: [{command: "test -f done.flag", interval_secs: 5, timeout_secs: 60}]

Every problem is collected and reported at once, each naming the item (`MissionFileError`);
nothing is written to Redis unless the whole file is valid, and then in one MULTI/EXEC.
Pure apart from reading the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import yaml

from tinytownd.config.yaml_file import (FileMissing, TextFileError, read_utf8, safe_load,
                                        yaml_problem)
from tinytownd.store.wire import new_id, utcnow

from . import scoring
from .budget import META_BUDGET, parse_budget
from .mission import Mission, MissionPolicy, objective_doc
from .watch import CommandWatch
from .work import WORK_KINDS, WorkItem

TOP_KEYS = {"objective", "policy", "work_items"}
POLICY_KEYS = {"max_parallel_items", "reviewer_required", "watch_interval_secs", "max_attempts",
               "auto_merge", "max_cost_usd"}
ITEM_KEYS = {"id", "title", "kind", "owner_role", "depends_on", "description", "watches"}
WATCH_KEYS = {"command", "interval_secs", "timeout_secs"}
KIND_ALIASES = {"merge_gate": "mergegate", "merge-gate": "mergegate", "follow-up": "followup"}
DEFAULT_MAX_ATTEMPTS = 3
MAX_MISSION_FILE_BYTES = 4 << 20   # a mission file is a plan of work items, not data


class MissionFileError(ValueError):
    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


@dataclass
class ItemSpec:
    file_id: str
    title: str
    kind: str = "implement"
    owner_role: str | None = None
    depends_on: list[str] = field(default_factory=list)
    description: str = ""
    watches: list[dict] = field(default_factory=list)
    source_ref: str | None = None


@dataclass
class Compiled:
    mission: Mission
    items: list[WorkItem]
    cmd_watches: list[CommandWatch]
    meta: dict[str, str]
    log: list[str]
    file_ids: dict[str, str]      # file id -> work item uuid


def known_roles(extra: Iterable[str] = ()) -> set[str]:
    """The roles an owner_role may name: the ones scoring knows, plus `extra` (configured
    agents' roles, roles of agents in the town)."""
    return set(scoring.KNOWN_ROLES) | {str(r).strip().lower() for r in extra if r}


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A cycle as [a, b, …, a] (deterministic: sorted start order), or None."""
    color: dict[str, int] = {}
    for start in sorted(deps):
        if color.get(start):
            continue
        stack = [(start, iter(sorted(deps.get(start, ()))))]
        path = [start]
        color[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            if nxt not in deps:
                continue
            c = color.get(nxt, 0)
            if c == 1:
                return path[path.index(nxt):] + [nxt]
            if c == 0:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(deps.get(nxt, ())))))
    return None


def validate_graph(specs: list[ItemSpec], roles: set[str] | None) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        if s.file_id in seen:
            problems.append(f"work_items[{i}]: duplicate id '{s.file_id}' (also "
                            f"work_items[{seen[s.file_id]}])")
        else:
            seen[s.file_id] = i
    for i, s in enumerate(specs):
        name = f"work_items[{i}] '{s.file_id}'"
        if s.kind not in WORK_KINDS:
            problems.append(f"{name}: unknown kind '{s.kind}' (one of {', '.join(WORK_KINDS)})")
        if s.owner_role and roles is not None and s.owner_role.strip().lower() not in roles:
            problems.append(f"{name}: unknown owner_role '{s.owner_role}' (known: "
                            f"{', '.join(sorted(roles))})")
        for d in s.depends_on:
            if d not in seen:
                problems.append(f"{name}: depends_on '{d}' does not exist")
            elif d == s.file_id:
                problems.append(f"{name}: depends on itself")
    if not any("duplicate id" in p for p in problems):
        cyc = find_cycle({s.file_id: [d for d in s.depends_on if d in seen] for s in specs})
        if cyc:
            problems.append(f"dependency cycle: {' -> '.join(repr(c) for c in cyc)}")
    return problems


def _parse_items(raw: Any, problems: list[str]) -> list[ItemSpec]:
    if not isinstance(raw, list) or not raw:
        problems.append("work_items: must be a non-empty list")
        return []
    specs = []
    for i, d in enumerate(raw):
        where = f"work_items[{i}]"
        if not isinstance(d, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        fid = d.get("id")
        if fid is None or not str(fid).strip():
            problems.append(f"{where}: id is required")
            continue
        fid = str(fid).strip()
        where = f"{where} '{fid}'"
        for k in sorted(set(d) - ITEM_KEYS):
            problems.append(f"{where}: unknown key '{k}' (known: {', '.join(sorted(ITEM_KEYS))})")
        kind = str(d.get("kind") or "implement").strip().lower()
        kind = KIND_ALIASES.get(kind, kind)
        deps = d.get("depends_on") or []
        if isinstance(deps, str):
            deps = [deps]
        if not isinstance(deps, list):
            problems.append(f"{where}: depends_on must be a list of ids")
            deps = []
        role = d.get("owner_role")
        if role is not None and not isinstance(role, str):
            problems.append(f"{where}: owner_role must be a string")
            role = None
        title = d.get("title", fid)
        if not isinstance(title, str) or not title.strip():
            problems.append(f"{where}: title must be a non-empty string")
            title = fid
        desc = d.get("description", "")
        if not isinstance(desc, str):
            problems.append(f"{where}: description must be a string")
            desc = ""
        watches = d.get("watches") or []
        if not isinstance(watches, list):
            problems.append(f"{where}: watches must be a list")
            watches = []
        for j, w in enumerate(watches):
            ww = f"{where}: watches[{j}]"
            if not isinstance(w, dict) or not isinstance(w.get("command"), str) or \
                    not w["command"].strip():
                problems.append(f"{ww}: needs a command (string)")
                continue
            for k in sorted(set(w) - WATCH_KEYS):
                problems.append(f"{ww}: unknown key '{k}'")
            for k, lo in (("interval_secs", 0), ("timeout_secs", 0.001)):
                v = w.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or v < lo):
                    problems.append(f"{ww}: {k} must be a number >= {lo}")
        specs.append(ItemSpec(file_id=fid, title=title.strip(), kind=kind,
                              owner_role=role.strip() if role else None,
                              depends_on=[str(x).strip() for x in deps], description=desc,
                              watches=watches))
    return specs


def _parse_policy(raw: Any, problems: list[str]) -> tuple[MissionPolicy, int]:
    pol, attempts = MissionPolicy(), DEFAULT_MAX_ATTEMPTS
    if raw is None:
        return pol, attempts
    if not isinstance(raw, dict):
        problems.append("policy: must be a mapping")
        return pol, attempts
    for k in sorted(set(raw) - POLICY_KEYS):
        problems.append(f"policy: unknown key '{k}' (known: {', '.join(sorted(POLICY_KEYS))})")
    for k, lo in (("max_parallel_items", 1), ("watch_interval_secs", 0), ("max_attempts", 1)):
        if k in raw:
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                problems.append(f"policy.{k}: must be an integer >= {lo}")
            elif k == "max_attempts":
                attempts = v
            else:
                setattr(pol, k, v)
    for k in ("reviewer_required", "auto_merge"):
        if k in raw:
            if not isinstance(raw[k], bool):
                problems.append(f"policy.{k}: must be true or false")
            else:
                setattr(pol, k, raw[k])
    return pol, attempts


def build(specs: list[ItemSpec], objectives: list[dict], policy: MissionPolicy,
          max_attempts: int, *, objective_text: str = "", watch_cwd: str | None = None,
          now: datetime | None = None, mid: str | None = None, source: str = "file",
          max_cost_usd: float | None = None) -> Compiled:
    """Turn validated specs into tt records (ids, depends_on uuids, running mission)."""
    now = now or utcnow()
    m = Mission.new(objectives, policy, now=now, mid=mid)
    m.start(now)
    ids = {s.file_id: new_id() for s in specs}
    items, watches = [], []
    meta = {"max_attempts": str(max_attempts), "source": source}
    if max_cost_usd is not None:
        meta[META_BUDGET] = repr(max_cost_usd)
    if objective_text:
        meta["objective"] = objective_text
    for n, s in enumerate(specs):
        at = now + timedelta(microseconds=n)   # creation order = file order (ready-order ties)
        wid = ids[s.file_id]
        items.append(WorkItem(id=wid, mission_id=m.id, title=s.title, kind=s.kind,
                              depends_on=[ids[d] for d in s.depends_on], owner_role=s.owner_role,
                              source_ref=s.source_ref, created_at=at, updated_at=at))
        meta[f"file_id:{wid}"] = s.file_id
        if s.description:
            meta[f"desc:{wid}"] = s.description
        for w in s.watches:
            watches.append(CommandWatch(id=new_id(), mission_id=m.id, work_item_id=wid,
                                        command=w["command"],
                                        interval_secs=int(w.get("interval_secs", 30)),
                                        timeout_secs=float(w.get("timeout_secs", 60)),
                                        cwd=watch_cwd, next_due_at=now))
    log = [f"Mission started via tinytownd ({source})",
           f"Bootstrapped {len(items)} work item(s) from mission objectives"]
    return Compiled(m, items, watches, meta, log, ids)


def compile_text(text: str, path: str = "<mission>", *, roles: set[str] | None = None,
                 now: datetime | None = None) -> Compiled:
    problems: list[str] = []
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        raise MissionFileError(path, [f"invalid YAML: {yaml_problem(e)}"]) from None
    if not isinstance(data, dict):
        raise MissionFileError(path, ["the top level must be a mapping with work_items"])
    for k in sorted(set(data) - TOP_KEYS):
        problems.append(f"unknown key '{k}' (known: {', '.join(sorted(TOP_KEYS))})")
    objective = data.get("objective", "")
    if not isinstance(objective, str):
        problems.append("objective: must be a string")
        objective = ""
    policy, attempts = _parse_policy(data.get("policy"), problems)
    budget = parse_budget(data["policy"].get("max_cost_usd"), problems) \
        if isinstance(data.get("policy"), dict) else None
    specs = _parse_items(data.get("work_items"), problems)
    if not problems:
        problems.extend(validate_graph(specs, roles))
    if problems:
        raise MissionFileError(path, problems)
    abspath = os.path.abspath(path) if not path.startswith("<") else path
    cwd = str(Path(abspath).parent) if not path.startswith("<") else None
    return build(specs, [objective_doc(abspath)], policy, attempts, objective_text=objective,
                 watch_cwd=cwd, now=now, source="file", max_cost_usd=budget)


def compile_file(path: str, *, roles: set[str] | None = None) -> Compiled:
    try:
        text = read_utf8(path, MAX_MISSION_FILE_BYTES, "mission file")
    except FileMissing:
        raise FileNotFoundError(path) from None
    except TextFileError as e:
        raise MissionFileError(path, [str(e)]) from None
    return compile_text(text, path, roles=roles)
