"""One mission tick, PURE (no Redis, no clock, no ids unless injected): tinytown-missions.md §3–§4.

Order (tt's, F3): control notes → due watches (results computed outside, by watches.py) →
reconcile items with bound task states (completion, failure/retry budget, dead assignees) →
finalize waiting items → promote → assign ready items by role-fit score within
max_parallel_items → mission bookkeeping (complete / blocked_reason / next_wake_at) →
dispatcher bookkeeping (tick, progress, help escalation with tt's marker and backoff).

`run_tick(TickInput) -> TickOutput`: the output lists every write the engine must make in one
fenced transaction (changed records, tasks to create/cancel, meta updates, log lines, messages).
Deterministic: ready items in (topological depth, created_at, id) order, agents by
(score desc, longest idle, name, id).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from tinytownd.store.wire import AGENT_TERMINAL, TASK_TERMINAL, new_id, parse_ts
from . import scoring
from tinytownd.missions.model import (TAG_FIX, TAG_REVIEW, TAG_WORK, CommandWatch, MissionControlMessage,
                    MissionRun, WatchItem, WorkItem, short)

HELP_MARKER = "[Mission Help Needed] Mission {mid}"
WATCH_KINDS_FOR_PR = (("pr_checks", "create_fix_task"), ("bugbot_comments", "create_fix_task"),
                      ("review_comments", "create_fix_task"), ("mergeability", "advance_pipeline"))
PR_URL_RE = re.compile(r"https://github\.com/([^/\s]+)/([^/\s]+)/pull/(\d+)")
PR_SHORT_RE = re.compile(r"(?<![\w./-])([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#(\d+)")
REDIRECT_VERBS = ("redirect", "reassign", "reroute", "rebind")
KIND_RANK = {"work": 3, "fix": 2, "review": 1}
STATE_RANK = {"running": 2, "assigned": 1}


@dataclass
class SchedConfig:
    tick_interval_s: float = 30.0          # fallback next_wake_at (tt)
    stall_threshold_s: float = 180.0       # help: no progress for this long
    help_base_s: float = 1800.0            # help repeat base (tt: 1800)
    help_cap: int = 8                      # repeat multiplier cap
    watch_snooze_s: float = 180.0          # after a trigger
    watch_max_failures: int = 5
    default_max_attempts: int = 3
    per_agent_per_tick: int = 1            # B11: an idle agent takes ≤ this many items per tick
    review_reject_prefixes: tuple = ("rejected:", "changes requested:")


@dataclass
class WatchOutcome:
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
    mission: MissionRun
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


@dataclass
class TickOutput:
    mission: MissionRun
    mission_changed: bool = False
    items_changed: set[str] = field(default_factory=set)
    watches_changed: set[str] = field(default_factory=set)
    new_watches: set[str] = field(default_factory=set)
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
    next_wake: datetime | None = None


def task_binding(task: dict, mid: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(mission id, work item id, kind) from a task's tags, as tt's scheduler parses them."""
    tags = task.get("tags") or []
    m = next((t[8:] for t in tags if t.startswith("mission:")), None)
    w = next((t[10:] for t in tags if t.startswith("work-item:")), None)
    if TAG_REVIEW in tags:
        kind = "review"
    elif TAG_FIX in tags:
        kind = "fix"
    elif TAG_WORK in tags:
        kind = "work"
    else:
        kind = None
    return m, w, kind


def pr_refs(artifacts: list[str]) -> list[str]:
    """PR refs in artifacts, canonicalized to `owner/repo#N` (B9: URL and short form = one PR)."""
    refs = set()
    for a in artifacts:
        for o, r, n in PR_URL_RE.findall(a):
            refs.add(f"{o}/{r}#{n}")
        for o, r, n in PR_SHORT_RE.findall(PR_URL_RE.sub(" ", a)):
            refs.add(f"{o}/{r}#{n}")
    return sorted(refs)


def topo_depth(items: dict[str, WorkItem]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for root in items:
        if root in depth:
            continue
        stack = [(root, False)]
        on_path = set()
        while stack:
            wid, expanded = stack.pop()
            if wid in depth:
                continue
            it = items.get(wid)
            deps = [d for d in (it.depends_on if it else ()) if d in items]
            if expanded:
                on_path.discard(wid)
                depth[wid] = 1 + max((depth.get(d, 0) for d in deps), default=-1)
                continue
            on_path.add(wid)
            stack.append((wid, True))
            for d in deps:
                if d not in depth and d not in on_path:
                    stack.append((d, False))
    return depth


def resolve_agent_ref(agents: list[dict], ref: str) -> dict | None:
    """tt's resolve_agent_ref: uuid, name, display name, label or short id (case-insensitive).
    Raises LookupError when ambiguous."""
    r = ref.strip().lower()
    if r in ("supervisor", "conductor"):
        return None
    exact = [a for a in agents if a.get("id", "").lower() == r]
    if exact:
        return exact[0]
    hits = []
    for a in agents:
        name = (a.get("name") or "").lower()
        nick = (a.get("nickname") or "").lower()
        disp = nick or name
        role = (a.get("role_id") or "default").lower()
        label = f"{disp} [{name if role == 'default' else role}]"
        if r in (name, disp, label) or a.get("id", "").lower().startswith(r) and len(r) == 4:
            hits.append(a)
    if len(hits) > 1:
        raise LookupError(f"agent reference '{ref}' is ambiguous "
                          f"({', '.join(a.get('name', '?') for a in hits)})")
    return hits[0] if hits else None


def _ts(v) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if not v:
        return None
    try:
        return parse_ts(v)
    except ValueError:
        return None


class _Tick:
    def __init__(self, inp: TickInput):
        self.i = inp
        self.now = inp.now
        self.m = inp.mission
        self.o = TickOutput(mission=self.m)
        self.mid = self.m.id
        self.agents = {a["id"]: a for a in inp.agents if a.get("id")}
        self.items = inp.items
        self.live: dict[str, list[dict]] = {}      # wid -> live bound tasks (this mission)
        self.terminal: dict[str, list[dict]] = {}
        for t in inp.tasks.values():
            m, w, k = task_binding(t)
            if m != self.mid or not w or k is None:
                continue
            (self.terminal if t.get("state") in TASK_TERMINAL else self.live).setdefault(
                w, []).append(t)
        self.busy = set(inp.busy_agents)
        for ts in self.live.values():
            for t in ts:
                if t.get("assigned_to"):
                    self.busy.add(t["assigned_to"])
        self.given: dict[str, int] = {}
        self.freed: set[str] = set()   # assignees of tasks that just finished (see idle_agents)

    # ------------------------------------------------------------------ helpers
    def log(self, text: str):
        self.o.log.append(text)

    def item_changed(self, it: WorkItem):
        self.o.items_changed.add(it.id)

    def meta(self, key: str, default: str | None = None) -> str | None:
        if key in self.o.meta_set:
            return self.o.meta_set[key]
        if key in self.o.meta_del:
            return default
        return self.i.meta.get(key, default)

    def set_meta(self, key: str, value):
        self.o.meta_set[key] = str(value)
        self.o.meta_del.discard(key)

    def del_meta(self, key: str):
        self.o.meta_set.pop(key, None)
        self.o.meta_del.add(key)

    def alive(self, aid: str | None) -> bool:
        a = self.agents.get(aid or "")
        return bool(a) and a.get("state") not in AGENT_TERMINAL

    def max_attempts(self) -> int:
        try:
            return max(1, int(self.meta("max_attempts") or self.i.cfg.default_max_attempts))
        except ValueError:
            return self.i.cfg.default_max_attempts

    def gate(self, it: WorkItem) -> bool:
        return self.m.policy.reviewer_required and it.kind in ("implement", "test")

    def watches_of(self, wid: str):
        return [w for w in self.i.watches.values() if w.work_item_id == wid] + \
               [w for w in self.i.cmd_watches.values() if w.work_item_id == wid]

    def idle_agents(self) -> list[dict]:
        # An agent still `working` whose mission task just finished is finishing its round: a
        # task_assign queued now is taken right after (saves a wait for the state flip).
        return [a for a in self.agents.values()
                if (a.get("state") == "idle" or (a.get("state") == "working"
                                                 and a["id"] in self.freed))
                and a["id"] not in self.busy
                and self.given.get(a["id"], 0) < self.i.cfg.per_agent_per_tick]

    @staticmethod
    def _idle_key(a: dict):
        return (a.get("last_active_at") or "", a.get("name") or "", a["id"])

    def best_agent(self, kind: str, owner_role: str | None, candidates=None) -> dict | None:
        best, best_key = None, None
        for a in (self.idle_agents() if candidates is None else candidates):
            s = scoring.score(kind, owner_role, a, self.given.get(a["id"], 0))
            if s <= 0:
                continue
            key = (-s,) + self._idle_key(a)
            if best_key is None or key < best_key:
                best, best_key = a, key
        return best

    def description(self, it: WorkItem) -> str:
        return self.meta(f"desc:{it.id}") or ""

    def create_task(self, kind: str, it: WorkItem, agent: dict, text: str, extra_tags=()) -> NewTask:
        tid = self.i.new_id()
        tags = {"work": [TAG_WORK, "mission-task:work"], "review": [TAG_REVIEW,
                                                                     "mission-task:review"],
                "fix": [TAG_FIX, "mission-task:fix"]}[kind]
        tags = tags + [f"mission:{self.mid}", f"work-item:{it.id}"] + list(extra_tags)
        if "watch:" in " ".join(extra_tags):
            tags.remove("mission-task:fix")
        nt = NewTask(tid, agent["id"], text, tags, kind, it.id)
        self.o.new_tasks.append(nt)
        self.live.setdefault(it.id, []).append({"id": tid, "state": "assigned", "tags": tags,
                                                "assigned_to": agent["id"],
                                                "updated_at": self.now})
        self.busy.add(agent["id"])
        self.given[agent["id"]] = self.given.get(agent["id"], 0) + 1
        return nt

    def header(self, intro: str, it: WorkItem) -> str:
        return f"{intro} {it.title}\n\nMission: {self.mid}\nWork item: {it.id}\n"

    # ------------------------------------------------------------------ 1. control notes
    def controls(self):
        notes = sorted(self.i.controls, key=lambda c: (c.created_at, c.id))
        for c in notes:
            if c.processed_at is not None:
                continue
            try:
                self.control(c)
            except Exception as e:  # B2: one bad note never aborts the tick
                self.log(f"Dispatcher could not process note from {c.sender}: {e}")
            c.processed_at = self.now
            self.o.controls_processed.append(c)
            self.o.mission_changed = True

    def control(self, c: MissionControlMessage):
        body = c.body.strip()
        lower = body.lower()
        words = body.split()
        if lower.startswith("resume") or lower.startswith("retry"):
            force = len(words) > 1 and words[1].lower() == "force"
            if self.m.state == "blocked":
                n = self.force_watches() if force else 0
                self.m.start(self.now)
                self.o.progress = True
                extra = f" (force-completed {n} blocking watch(es))" if n else ""
                self.log(f"Dispatcher received resume directive from {c.sender}: {body}{extra}")
            elif self.m.state == "running":
                # B10: resume is useful on a running mission: retry exhausted items, poll now.
                n = self.retry_exhausted()
                w = self.force_watches() if force else self.watches_due_now()
                self.o.progress = bool(n or w)
                self.log(f"Dispatcher received resume directive from {c.sender} while mission "
                         f"was running: retried {n} blocked item(s), "
                         f"{'force-completed' if force else 're-checking'} {w} watch(es): {body}")
            else:
                self.log(f"Dispatcher ignored resume directive from {c.sender} while mission "
                         f"was {self.m.state.capitalize()}: {body}")
            return
        if words and words[0].lower() in REDIRECT_VERBS:
            parsed = self.parse_redirect(words[1:])
            if parsed is not None:
                self.redirect(c, body, *parsed)
                return
        if lower.startswith("pause") or lower.startswith("hold"):
            if self.m.state == "running":
                self.m.block(f"Paused by {c.sender}: {body}", self.now)
                self.o.progress = True
                self.log(f"Dispatcher received pause directive from {c.sender}: {body}")
            else:
                self.log(f"Dispatcher ignored pause directive from {c.sender} while mission was "
                         f"{self.m.state.capitalize()}: {body}")
            return
        self.log(f"Dispatcher received operator note from {c.sender}: {body}")

    @staticmethod
    def parse_redirect(rest: list[str]):
        if len(rest) >= 2 and rest[0].lower() == "to":
            return None, rest[1], " ".join(rest[2:])
        if len(rest) >= 3 and rest[1].lower() == "to":
            return rest[0], rest[2], " ".join(rest[3:])
        return None

    def resolve_item(self, ref: str | None) -> WorkItem | None:
        open_items = [it for it in self.items.values() if it.status != "done"]
        if ref is None:
            return open_items[0] if len(open_items) == 1 else None
        r = ref.strip().lower()
        if r in self.items:
            return self.items[r]
        fid = [it for it in open_items if (self.meta(f"file_id:{it.id}") or "").lower() == r]
        if len(fid) == 1:
            return fid[0]
        hits = [it for it in open_items if it.id.lower().startswith(r)]
        return hits[0] if len(hits) == 1 else None

    def redirect(self, c, body, item_ref, agent_ref, reason):
        it = self.resolve_item(item_ref)
        if it is None:
            self.log(f"Dispatcher ignored redirect directive from {c.sender}: could not "
                     f"resolve work item in '{body}'")
            return
        try:
            agent = resolve_agent_ref(list(self.agents.values()), agent_ref)
        except LookupError as e:
            self.log(f"Dispatcher ignored redirect directive from {c.sender}: {e} in '{body}'")
            return
        if agent is None:
            self.log(f"Dispatcher ignored redirect directive from {c.sender}: unknown agent "
                     f"'{agent_ref}' in '{body}'")
            return
        if agent.get("state") in AGENT_TERMINAL:
            self.log(f"Dispatcher ignored redirect directive from {c.sender}: agent "
                     f"'{agent.get('name')}' is {agent.get('state')} in '{body}'")
            return
        cancelled, keep = 0, None
        why = f"Superseded by dispatcher redirect to {agent.get('name')}" + \
              (f" ({reason})" if reason else "")
        for t in list(self.live.get(it.id, [])):
            if t.get("assigned_to") == agent["id"] and keep is None:
                keep = t
                continue
            self.cancel(it.id, t, why)
            cancelled += 1
        if keep is None:
            fix = bool(it.artifact_refs)
            intro = "[Mission Fix Redirect]" if fix else "[Mission Redirect]"
            prev = self.agents.get(it.assigned_to or "", {}).get("name") or "nobody"
            text = self.header(intro, it) + f"Previously assigned to: {prev}\n"
            if reason:
                text += f"Operator correction: {reason}\n"
            if it.artifact_refs:
                text += "Latest artifacts:\n" + "".join(f"- {a}\n" for a in it.artifact_refs[-5:])
            desc = self.description(it)
            if desc:
                text += f"\n{desc}\n"
            self.create_task("fix" if fix else "work", it, agent, text)
        it.assign(agent["id"], self.now)
        self.set_meta(f"implementer:{it.id}", agent["id"])
        self.item_changed(it)
        if self.m.state == "blocked":
            self.m.start(self.now)
        self.o.progress = True
        extra = f"; cancelled {cancelled} superseded mission task(s)" if cancelled else ""
        self.log(f"Redirected work item '{it.title}' to '{agent.get('name')}'{extra}"
                 + (f" ({reason})" if reason else ""))
        self.log(f"Dispatcher redirected work item {it.id} to {agent_ref} from {c.sender}")

    def cancel(self, wid: str, t: dict, reason: str):
        self.o.cancel_tasks.append((t["id"], reason))
        self.o.tasks_processed.add(t["id"])
        lst = self.live.get(wid, [])
        if t in lst:
            lst.remove(t)

    def force_watches(self) -> int:
        n = 0
        for w in list(self.i.watches.values()) + list(self.i.cmd_watches.values()):
            if w.status != "done":
                w.complete()
                self.mark_watch(w)
                n += 1
        return n

    def watches_due_now(self) -> int:
        n = 0
        for w in list(self.i.watches.values()) + list(self.i.cmd_watches.values()):
            if w.status != "done" and w.next_due_at > self.now:
                w.next_due_at = self.now
                self.mark_watch(w)
                n += 1
        return n

    def retry_exhausted(self) -> int:
        n = 0
        for it in self.items.values():
            if self.meta(f"exhausted:{it.id}") and it.status == "blocked":
                self.del_meta(f"exhausted:{it.id}")
                self.set_meta(f"attempts:{it.id}", 0)
                it.assigned_to = None
                it.mark_ready(self.now)
                self.item_changed(it)
                self.log(f"Work item '{it.title}' released for retry by operator")
                n += 1
        return n

    def mark_watch(self, w):
        if isinstance(w, CommandWatch):
            self.o.cmd_watches_changed.add(w.id)
        else:
            self.o.watches_changed.add(w.id)

    # ------------------------------------------------------------------ 2. watches
    def watches(self):
        for wid, res in self.i.watch_results.items():
            w = self.i.watches.get(wid) or self.i.cmd_watches.get(wid)
            if w is None or not w.is_due(self.now):
                continue
            it = self.items.get(w.work_item_id)
            self.mark_watch(w)
            if not res.ok:
                w.record_failure(self.now)
                if w.consecutive_failures == self.i.cfg.watch_max_failures and it is not None \
                        and it.status != "done":
                    it.block(self.now)
                    self.item_changed(it)
                    self.log(f"Work item '{it.title}' blocked: Watch check failed: {res.error}")
                continue
            if isinstance(w, CommandWatch):
                w.last_exit = res.exit_code
                if res.triggered:
                    w.last_check_at = self.now
                    w.complete()
                    self.o.progress = True
                    self.log(f"Command watch {short(w.id)} triggered for '{it.title if it else '?'}'"
                             f": {w.command}")
                else:
                    w.record_check(self.now)
                continue
            if res.triggered and not (w.on_trigger == "advance_pipeline" and res.complete):
                self.trigger(w, it)
                self.o.progress = True
            if res.triggered and not res.complete:
                w.snooze(self.i.cfg.watch_snooze_s, self.now)
                w.last_check_at = self.now
                self.o.progress = True
            if res.complete:
                w.last_check_at = self.now
                w.complete()
                self.o.progress = True
            elif not res.triggered:
                w.record_check(self.now)

    def trigger(self, w: WatchItem, it: WorkItem | None):
        if it is None:
            return
        if w.on_trigger == "create_fix_task":
            self.ensure_fix_task(it, f"Watch {w.kind} triggered on {w.target_ref}", watch=w)
        elif w.on_trigger == "advance_pipeline":
            if w.target_ref not in it.artifact_refs:
                it.record_artifacts([w.target_ref], self.now)
                self.item_changed(it)
        elif w.on_trigger == "notify_reviewer":
            for a in self.agents.values():
                if scoring.is_reviewer(a):
                    self.o.messages.append((a["id"], "informational", {
                        "summary": f"[Mission Notification] Watch triggered for {it.id}: "
                                   f"{w.kind} on {w.target_ref}"}))
        self.log(f"Watch {w.id} triggered action {w.on_trigger} for {w.target_ref}")

    # ------------------------------------------------------------------ 3. reconcile
    def reconcile(self):
        for wid, it in self.items.items():
            changed = False
            # terminal bound tasks not processed yet (B5 completion, B6 failure path)
            for t in sorted(self.terminal.get(wid, []),
                            key=lambda t: (str(t.get("completed_at") or t.get("updated_at")),
                                           t["id"])):
                changed |= self.on_terminal(it, t)
            if it.status == "done":
                for t in list(self.live.get(wid, [])):
                    if task_binding(t)[2] in ("work", "fix") and \
                            t.get("assigned_to") and not self.alive(t.get("assigned_to")):
                        self.cancel(wid, t, "Cancelled: work item already done")
                if changed:
                    self.item_changed(it)
                    self.o.reconciled.append(wid)
                continue
            live = self.live.get(wid, [])
            # B6: a live task whose assignee is gone → cancel it and release the item
            for t in list(live):
                aid = t.get("assigned_to")
                if aid and not self.alive(aid):
                    who = "no longer exists" if aid not in self.agents else \
                        "is in a terminal state"
                    self.cancel(wid, t, f"Cancelled: assignee {who}")
                    self.log(f"Cancelled mission task {t['id']} of '{it.title}': assignee {who}")
                    if task_binding(t)[2] in ("work", "fix") and it.status in ("assigned",
                                                                              "running"):
                        it.assigned_to = None
                        it.mark_ready(self.now)
                        changed = True
            live = self.live.get(wid, [])
            if live:
                auth = max(live, key=lambda t: (KIND_RANK.get(task_binding(t)[2], 0),
                                                STATE_RANK.get(t.get("state"), 0),
                                                str(t.get("updated_at") or "")))
                kind = task_binding(auth)[2]
                owner = auth.get("assigned_to")
                # W8: a review task never makes the reviewer the item's owner
                if owner and owner != it.assigned_to and kind in ("work", "fix"):
                    it.assigned_to = owner
                    self.set_meta(f"implementer:{wid}", owner)
                    self.log(f"Rebound work item '{it.title}' to live mission task owner {owner}")
                    changed = True
                st = auth.get("state")
                if kind in ("work", "fix") and st in ("assigned", "running") and it.status != st:
                    it.status = st
                    it.updated_at = self.now
                    self.log(f"Updated work item '{it.title}' to {st.capitalize()} from live "
                             "mission task")
                    changed = True
            elif it.assigned_to and not self.alive(it.assigned_to):
                if it.status in ("assigned", "running"):
                    self.log(f"Released stale assignee {it.assigned_to} from work item "
                             f"'{it.title}'")
                    it.assigned_to = None
                    it.mark_ready(self.now)
                    changed = True
                elif it.status == "blocked":
                    self.log(f"Cleared stale blocked assignee {it.assigned_to} from work item "
                             f"'{it.title}'")
                    it.assigned_to = None
                    changed = True
            if changed:
                self.item_changed(it)
                self.o.reconciled.append(wid)

    def on_terminal(self, it: WorkItem, t: dict) -> bool:
        """Process one terminal bound task once. Returns whether the item changed."""
        self.o.tasks_processed.add(t["id"])
        if t.get("assigned_to"):
            self.freed.add(t["assigned_to"])
        kind = task_binding(t)[2]
        state = t.get("state")
        result = (t.get("result") or "").strip()
        if state == "completed":
            if it.status == "done" or f"task:{t['id']}" in it.artifact_refs:
                return False
            arts = [f"task:{t['id']}"] + ([result] if result else [])
            if kind == "review":
                low = result.lower()
                if any(low.startswith(p) for p in self.i.cfg.review_reject_prefixes):
                    self.request_changes(it, result)
                else:
                    self.approve(it, arts)
            else:
                self.record_submission(it, arts)
            return True
        # failed / cancelled
        if kind == "review":
            self.log(f"Review task {t['id']} for '{it.title}' ended {state}: {result}")
            return False
        if self.live.get(it.id) or it.status not in ("assigned", "running"):
            return False
        if t.get("assigned_to") and it.assigned_to and t["assigned_to"] != it.assigned_to:
            return False
        if state == "cancelled":
            it.assigned_to = None
            it.mark_ready(self.now)
            self.log(f"Work item '{it.title}' released: task {t['id']} was cancelled ({result})")
            return True
        n = int(self.meta(f"attempts:{it.id}") or 0) + 1
        self.set_meta(f"attempts:{it.id}", n)
        self.set_meta(f"last_error:{it.id}", result[:500])
        limit = self.max_attempts()
        it.assigned_to = None
        if n < limit:
            it.mark_ready(self.now)
            self.log(f"Work item '{it.title}' task {t['id']} failed (attempt {n}/{limit}); "
                     f"retrying: {result}")
        else:
            it.block(self.now)
            self.set_meta(f"exhausted:{it.id}", n)
            self.log(f"Work item '{it.title}' blocked after {n} failed attempt(s): {result}")
        return True

    def record_submission(self, it: WorkItem, arts: list[str]):
        refs = pr_refs(arts)
        it.record_artifacts(arts, self.now)
        it.clear_review_approval(self.now)
        if refs:
            it.block(self.now)
            self.ensure_pr_watches(it, refs)
            if self.gate(it):
                self.ensure_review_task(it)
                self.log(f"Work item '{it.title}' submitted {', '.join(refs)}; waiting for review")
            else:
                self.log(f"Work item '{it.title}' submitted {', '.join(refs)}; waiting on "
                         "external watches")
        elif self.gate(it):
            it.block(self.now)
            self.ensure_review_task(it)
            self.log(f"Work item '{it.title}' submitted; waiting for review")
        elif any(w.status != "done" for w in self.watches_of(it.id)):
            it.block(self.now)
            self.log(f"Work item '{it.title}' submitted; waiting on its watches")
        else:
            it.complete((), self.now)
            self.o.done.append(it.id)
            self.log(f"Work item '{it.title}' completed")

    def approve(self, it: WorkItem, arts: list[str]):
        it.record_artifacts(arts, self.now)
        it.approve_review(self.now)
        it.block(self.now)
        self.log(f"Reviewer approved '{it.title}'")
        if any(w.status != "done" for w in self.watches_of(it.id)):
            return
        it.complete((), self.now)
        self.o.done.append(it.id)
        self.log(f"Work item '{it.title}' finalized after review/watch gates")

    def request_changes(self, it: WorkItem, reason: str):
        it.block(self.now)
        it.clear_review_approval(self.now)
        self.ensure_fix_task(it, reason)
        self.log(f"Reviewer requested changes for '{it.title}': {reason}")

    def ensure_pr_watches(self, it: WorkItem, refs: list[str]):
        existing = {(w.work_item_id, w.kind, w.target_ref): w for w in self.i.watches.values()}
        for ref in refs:
            for kind, action in WATCH_KINDS_FOR_PR:
                w = existing.get((it.id, kind, ref))
                if w is not None:
                    w.status, w.next_due_at, w.last_check_at = "active", self.now, None
                    w.consecutive_failures, w.on_trigger = 0, action
                    self.o.watches_changed.add(w.id)
                    continue
                w = WatchItem(id=self.i.new_id(), mission_id=self.mid, work_item_id=it.id,
                              kind=kind, target_ref=ref,
                              interval_secs=self.m.policy.watch_interval_secs,
                              next_due_at=self.now, on_trigger=action)
                self.i.watches[w.id] = w
                self.o.watches_changed.add(w.id)
                self.o.new_watches.add(w.id)

    def ensure_review_task(self, it: WorkItem) -> bool:
        if any(task_binding(t)[2] == "review" for t in self.live.get(it.id, [])):
            return True
        reviewers = [a for a in self.idle_agents() if scoring.is_reviewer(a)]
        if not reviewers:
            self.o.waiting_for_agent = True
            return False
        a = min(reviewers, key=self._idle_key)
        latest = next((x for x in reversed(it.artifact_refs) if "github.com" in x or "#" in x),
                      "no PR ref provided")
        text = self.header("[Mission Review]", it) + (
            f"Latest PR/ref: {latest}\n\nReview the submission. Complete this task with a result "
            "starting with `approved: ...` or `rejected: <what to change>`.\n")
        nt = self.create_task("review", it, a, text)
        self.log(f"Assigned review task {nt.task_id} for '{it.title}' to reviewer "
                 f"'{a.get('name')}'")
        return True

    def ensure_fix_task(self, it: WorkItem, reason: str, watch: WatchItem | None = None):
        for t in self.live.get(it.id, []):
            if task_binding(t)[2] == "fix" and (watch is None or
                                                f"watch:{watch.id}" in (t.get("tags") or [])):
                return  # B8: one open fix task per item (+ watch)
        owner = None
        for cand in (self.meta(f"implementer:{it.id}"), it.assigned_to):
            if cand and self.alive(cand):
                owner = self.agents[cand]
                break
        if owner is None:
            owner = self.best_agent(it.kind, it.owner_role)
        if owner is None:
            self.o.waiting_for_agent = True
            self.log(f"No agent available for a fix task on '{it.title}'")
            return
        if watch is not None:
            text = self.header("[Mission Fix Required]", it) + (
                f"Watch type: {watch.kind}\nTarget: {watch.target_ref}\nReason: {reason}\n")
            extra = [f"watch:{watch.id}"]
        else:
            text = self.header("[Mission Fix]", it) + f"Reason: {reason}\n"
            extra = []
        nt = self.create_task("fix", it, owner, text, extra)
        self.log(f"Assigned fix task {nt.task_id} for '{it.title}' to '{owner.get('name')}'")

    # ------------------------------------------------------------------ 4. finalize, promote
    def finalize(self):
        for it in self.items.values():
            if it.status != "blocked":
                continue
            if not it.artifact_refs and not it.reviewer_approved:
                continue
            if self.gate(it) and not it.reviewer_approved:
                self.ensure_review_task(it)   # B8: retried every tick until a reviewer is free
                continue
            if any(w.status != "done" for w in self.watches_of(it.id)):
                continue
            it.complete((), self.now)
            self.item_changed(it)
            self.o.done.append(it.id)
            self.log(f"Work item '{it.title}' completed")

    def promote(self):
        status = {wid: it.status for wid, it in self.items.items()}
        for it in self.items.values():
            if it.status == "pending" and all(status.get(d) == "done" for d in it.depends_on):
                it.mark_ready(self.now)
                self.item_changed(it)
                self.o.promoted.append(it.id)
                self.log(f"Work item '{it.title}' promoted to ready")

    # ------------------------------------------------------------------ 5. assign
    def assign(self):
        running = sum(1 for it in self.items.values() if it.status in ("assigned", "running"))
        slots = max(0, self.m.policy.max_parallel_items - running)
        ready = [it for it in self.items.values() if it.status == "ready"]
        if not slots or not ready:
            return
        depth = self.i.depth
        if depth is None or any(it.id not in depth for it in ready):
            depth = self.i.depth = topo_depth(self.items)
        ready.sort(key=lambda it: (depth.get(it.id, 0), it.created_at, it.id))
        for it in ready:
            if slots <= 0:
                break
            if not self.idle_agents():
                self.o.waiting_for_agent = True
                break
            a = self.best_agent(it.kind, it.owner_role)
            if a is None:
                self.o.waiting_for_agent = True
                continue
            text = self.header("[Mission Work Item]", it) + \
                f"Source: {it.source_ref or 'unknown'}\n"
            desc = self.description(it)
            if desc:
                text += f"\n{desc}\n"
            text += ("\nWhen you finish, complete this task with a short result. If you opened a "
                     "pull request, include its URL (or owner/repo#PR) so watches can take over.\n")
            nt = self.create_task("work", it, a, text)
            it.assign(a["id"], self.now)
            self.set_meta(f"implementer:{it.id}", a["id"])
            self.item_changed(it)
            self.o.assigned.append(it.id)
            slots -= 1
            self.log(f"Assigned '{it.title}' to agent '{a.get('name')}' as task {nt.task_id}")

    # ------------------------------------------------------------------ 6. bookkeeping
    def bookkeeping(self):
        items = list(self.items.values())
        all_watches = list(self.i.watches.values()) + list(self.i.cmd_watches.values())
        if not items:
            self.m.fail("Mission has no work items", self.now)
            self.o.completed = True
            self.log("Mission failed - it has no work items")
            return
        all_done = all(it.status == "done" for it in items)
        has_ready = any(it.status == "ready" for it in items)
        has_running = any(it.status in ("assigned", "running") for it in items)
        active = [w for w in all_watches if w.status in ("active", "snoozed")]
        next_due = min((w.next_due_at for w in active), default=None)
        if all_done and not active:
            self.m.complete(self.now)
            self.o.completed = True
            self.log("Mission completed - all work items and watches done")
            return
        if all_done:
            self.m.blocked_reason = f"Waiting on {len(active)} active watch(es)"
            self.m.next_wake_at = next_due
        elif not has_ready and not has_running:
            self.m.next_wake_at = next_due or self.now + timedelta(
                seconds=self.i.cfg.tick_interval_s)
            self.m.blocked_reason = "Waiting on dependency, review, or external watch"
        else:
            self.m.blocked_reason = None
            self.m.next_wake_at = next_due if active else None
        self.o.next_wake = self.m.next_wake_at

    def progress_made(self) -> bool:
        o = self.o
        return bool(o.progress or o.completed or o.reconciled or o.promoted or o.assigned
                    or o.done)

    def help_reason(self) -> str | None:
        m = self.m
        if m.is_terminal:
            return None
        if m.state == "blocked" and (m.blocked_reason or "").startswith(("Paused by",
                                                                         "Stopped by")):
            return None  # B10: no help for operator-paused missions
        exhausted = [self.items[k[10:]] for k in set(self.i.meta) | set(self.o.meta_set)
                     if k.startswith("exhausted:") and k[10:] in self.items]
        for it in sorted(exhausted, key=lambda x: (x.created_at, x.id)):
            n = self.meta(f"exhausted:{it.id}")
            if n and it.status == "blocked":
                err = self.meta(f"last_error:{it.id}") or ""
                return (f"Mission {self.mid} work item '{it.title}' ({it.id}) failed {n} "
                        f"time(s) and is blocked: {err}")
        since = m.dispatcher_last_progress_at or m.created_at
        stalled = (self.now - since).total_seconds()
        if stalled < self.i.cfg.stall_threshold_s:
            return None
        ready = sum(1 for it in self.items.values() if it.status == "ready")
        if ready and not self.idle_agents():
            return (f"Mission {self.mid} has {ready} ready work item(s) but no idle agents are "
                    "available")
        if m.blocked_reason:
            all_w = list(self.i.watches.values()) + list(self.i.cmd_watches.values())
            if any(w.status in ("active", "snoozed") for w in all_w):
                return None
            return f"Mission {self.mid} is still blocked: {m.blocked_reason}"
        return None

    def dispatcher_bookkeeping(self):
        m = self.m
        m.record_dispatch_tick(self.now)
        if self.progress_made():
            m.record_dispatch_progress(self.now)
        reason = self.help_reason()
        if reason is None:
            return
        changed = m.dispatcher_last_help_request_reason != reason
        last = m.dispatcher_last_help_request_at
        wait = self.i.cfg.help_base_s * min(2 ** min(m.dispatcher_help_request_attempts, 30),
                                            max(self.i.cfg.help_cap, 1))
        if last is None or changed or (self.now - last).total_seconds() >= wait:
            self.o.help_question = (
                f"{HELP_MARKER.format(mid=self.mid)}\n\n{reason}\n\n"
                f"Hint: tinytownd mission note {self.mid} \"resume ...\" (retry blocked items), "
                f"\"pause ...\", or \"redirect <item> to <agent>\"; "
                f"tt mission note {self.mid} \"...\" works too.")
            self.log(f"Dispatcher asked conductor for help: {reason}")
            m.record_help_request(reason, changed, self.now)

    def run(self) -> TickOutput:
        self.controls()
        if self.m.state == "running":
            self.watches()
            self.reconcile()
            self.finalize()
            self.promote()
            self.assign()
            self.bookkeeping()
        # else: blocked (paused/stopped) or terminal: no watch polling and no task creation
        # (B10). Finished tasks stay in the bound-task index and are reconciled with the full
        # submission logic (PR watches, review gate) once the mission runs again.
        self.dispatcher_bookkeeping()
        self.o.mission_changed = True
        return self.o


def run_tick(inp: TickInput) -> TickOutput:
    return _Tick(inp).run()
