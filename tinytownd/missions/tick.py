"""What one mission tick reads and writes, and the state the tick's steps share.

`TickInput` is a snapshot (records, bound tasks, agents, bookkeeping, watch results computed
outside); `TickOutput` lists every write the engine makes afterwards in one fenced transaction.
`Tick` is the working state of one run of the scheduler: the snapshot indexed the way the steps
(controls.py, submissions.py, scheduler.py) look things up, plus the helpers they share to log,
read and write bookkeeping, pick agents and create tasks. Pure: no Redis, no clock, no ids
unless injected.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from tinytownd.store.wire import AGENT_TERMINAL, TASK_TERMINAL, new_id

from . import scoring
from .mission import Mission, MissionControlMessage
from .watch import CommandWatch, WatchItem
from .work import WorkItem, task_binding, task_tags


@dataclass
class SchedConfig:
    tick_interval_s: float = 30.0          # next_wake_at when nothing else is due
    stall_threshold_s: float = 180.0       # help: no progress for this long
    help_base_s: float = 1800.0            # help repeat base
    help_cap: int = 8                      # repeat multiplier cap
    watch_snooze_s: float = 180.0          # after a trigger
    watch_max_failures: int = 5
    default_max_attempts: int = 3
    per_agent_per_tick: int = 1            # an idle agent takes at most this many items a tick
    review_reject_prefixes: tuple = ("rejected:", "changes requested:")


@dataclass
class WatchOutcome:
    """The result of checking one watch (watch_checks.py), applied by the tick."""
    ok: bool
    triggered: bool = False
    complete: bool = False
    error: str | None = None
    exit_code: int | None = None


@dataclass
class NewTask:
    task_id: str
    agent: str
    description: str
    tags: list[str]
    kind: str          # work | fix | review
    work_item_id: str


@dataclass
class TickInput:
    mission: Mission
    items: dict[str, WorkItem]
    watches: dict[str, WatchItem]
    cmd_watches: dict[str, CommandWatch]
    controls: list[MissionControlMessage]           # pending notes, any order
    tasks: dict[str, dict]                          # bound tasks (live + unprocessed terminal)
    agents: list[dict]
    meta: dict[str, str]
    now: datetime
    watch_results: dict[str, WatchOutcome] = field(default_factory=dict)
    busy_agents: set[str] = field(default_factory=set)   # agents given work elsewhere
    depth: dict[str, int] | None = None    # cached topo depth (engine); computed when None
    cfg: SchedConfig = field(default_factory=SchedConfig)
    new_id: Callable[[], str] = new_id
    skipped: list = field(default_factory=list)   # unreadable entries (the tick's I/O buries them)


@dataclass
class TickOutput:
    """The tick's writes. The mission record itself is always written (its dispatcher
    bookkeeping changes on every tick)."""
    mission: Mission
    items_changed: set[str] = field(default_factory=set)
    watches_changed: set[str] = field(default_factory=set)
    cmd_watches_changed: set[str] = field(default_factory=set)
    controls_processed: list[MissionControlMessage] = field(default_factory=list)
    new_tasks: list[NewTask] = field(default_factory=list)
    cancel_tasks: list[tuple[str, str]] = field(default_factory=list)
    tasks_processed: set[str] = field(default_factory=set)   # drop from the bound-task index
    meta_set: dict[str, str] = field(default_factory=dict)
    meta_del: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    messages: list[tuple[str, str, dict]] = field(default_factory=list)  # (to, type, fields)
    help_question: str | None = None
    completed: bool = False
    progress: bool = False
    promoted: list[str] = field(default_factory=list)
    assigned: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    waiting_for_agent: bool = False


class Tick:
    """The state of one tick over `inp`; its `out` collects the writes."""

    def __init__(self, inp: TickInput):
        self.inp = inp
        self.now = inp.now
        self.mission = inp.mission
        self.out = TickOutput(mission=self.mission)
        self.mid = self.mission.id
        self.agents = {a["id"]: a for a in inp.agents if a.get("id")}
        self.items = inp.items
        self.live: dict[str, list[dict]] = {}      # wid -> live bound tasks of this mission
        self.terminal: dict[str, list[dict]] = {}  # wid -> finished bound tasks not yet seen
        for t in inp.tasks.values():
            m, w, k = task_binding(t.get("tags"))
            if m != self.mid or not w or k is None:
                continue
            (self.terminal if t.get("state") in TASK_TERMINAL else self.live).setdefault(
                w, []).append(t)
        self.busy = set(inp.busy_agents)
        for tasks in self.live.values():
            for t in tasks:
                if t.get("assigned_to"):
                    self.busy.add(t["assigned_to"])
        self.given: dict[str, int] = {}   # agent -> tasks created for it in this tick
        self.freed: set[str] = set()      # assignees of tasks that just finished (idle_agents)

    # ------------------------------------------------------------------ output
    def log(self, text: str):
        self.out.log.append(text)

    def item_changed(self, it: WorkItem):
        self.out.items_changed.add(it.id)

    def watch_changed(self, w):
        if isinstance(w, CommandWatch):
            self.out.cmd_watches_changed.add(w.id)
        else:
            self.out.watches_changed.add(w.id)

    # ------------------------------------------------------------------ bookkeeping (meta)
    def meta(self, key: str, default: str | None = None) -> str | None:
        """A bookkeeping value as this tick left it so far."""
        if key in self.out.meta_set:
            return self.out.meta_set[key]
        if key in self.out.meta_del:
            return default
        return self.inp.meta.get(key, default)

    def set_meta(self, key: str, value):
        self.out.meta_set[key] = str(value)
        self.out.meta_del.discard(key)

    def del_meta(self, key: str):
        self.out.meta_set.pop(key, None)
        self.out.meta_del.add(key)

    def max_attempts(self) -> int:
        try:
            return max(1, int(self.meta("max_attempts") or self.inp.cfg.default_max_attempts))
        except ValueError:
            return self.inp.cfg.default_max_attempts

    def description(self, it: WorkItem) -> str:
        return self.meta(f"desc:{it.id}") or ""

    # ------------------------------------------------------------------ records
    def needs_review(self, it: WorkItem) -> bool:
        """Whether the item is done only once a reviewer approved it."""
        return self.mission.policy.reviewer_required and it.kind in ("implement", "test")

    def all_watches(self) -> list:
        return list(self.inp.watches.values()) + list(self.inp.cmd_watches.values())

    def watches_of(self, wid: str) -> list:
        return [w for w in self.inp.watches.values() if w.work_item_id == wid] + \
               [w for w in self.inp.cmd_watches.values() if w.work_item_id == wid]

    # ------------------------------------------------------------------ agents
    def alive(self, aid: str | None) -> bool:
        a = self.agents.get(aid or "")
        return bool(a) and a.get("state") not in AGENT_TERMINAL

    def idle_agents(self) -> list[dict]:
        # An agent still `working` whose mission task just finished is finishing its round: a
        # task_assign queued now is taken right after (saves a wait for the state flip).
        return [a for a in self.agents.values()
                if (a.get("state") == "idle" or (a.get("state") == "working"
                                                 and a["id"] in self.freed))
                and a["id"] not in self.busy
                and self.given.get(a["id"], 0) < self.inp.cfg.per_agent_per_tick]

    @staticmethod
    def idle_key(a: dict):
        """Sort key: longest idle first, then name and id (deterministic ties)."""
        return (a.get("last_active_at") or "", a.get("name") or "", a["id"])

    def best_agent(self, kind: str, owner_role: str | None, candidates=None) -> dict | None:
        """The best-scoring idle agent for a work item (none when every score is <= 0)."""
        best, best_key = None, None
        for a in (self.idle_agents() if candidates is None else candidates):
            s = scoring.score(kind, owner_role, a, self.given.get(a["id"], 0))
            if s <= 0:
                continue
            key = (-s,) + self.idle_key(a)
            if best_key is None or key < best_key:
                best, best_key = a, key
        return best

    # ------------------------------------------------------------------ tasks
    def header(self, intro: str, it: WorkItem) -> str:
        return f"{intro} {it.title}\n\nMission: {self.mid}\nWork item: {it.id}\n"

    def create_task(self, kind: str, it: WorkItem, agent: dict, text: str,
                    extra_tags=()) -> NewTask:
        """A new bound task of `kind` for `agent`; it counts as live (and the agent as busy)
        for the rest of the tick."""
        tid = self.inp.new_id()
        tags = task_tags(kind, self.mid, it.id, extra_tags)
        nt = NewTask(tid, agent["id"], text, tags, kind, it.id)
        self.out.new_tasks.append(nt)
        self.live.setdefault(it.id, []).append({"id": tid, "state": "assigned", "tags": tags,
                                                "assigned_to": agent["id"],
                                                "updated_at": self.now})
        self.busy.add(agent["id"])
        self.given[agent["id"]] = self.given.get(agent["id"], 0) + 1
        return nt

    def cancel(self, wid: str, t: dict, reason: str):
        self.out.cancel_tasks.append((t["id"], reason))
        self.out.tasks_processed.add(t["id"])
        lst = self.live.get(wid, [])
        if t in lst:
            lst.remove(t)
