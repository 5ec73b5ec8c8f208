"""tt's mission records with their exact JSON shapes and enum strings (tinytown-missions.md §1).

* `MissionRun` (string `tt:<town>:mission:<mid>`), `WorkItem` (`:work` hash), `WatchItem` (`:watch`
  hash), `MissionControlMessage` (`:control` hash): dataclasses whose `to_json()` writes every field
  tt's serde reader requires, in tt's order, with `Z` timestamps; `from_json()` reads what tt reads
  (any RFC 3339 offset; unknown keys ignored; missing required field / unknown enum → ValueError).
* `validate_*` are strict checks used by tests: a list of problems, empty = tt can parse it and it
  is spelled the way tt writes it.
* Transition methods mirror tt's (`start`, `block`, `complete`, `fail`, `record_*`, ...).

Pure: no Redis, no gevent.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tinytownd.store.wire import json_ts, new_id, parse_ts, utcnow

MISSION_STATES = ("planning", "running", "blocked", "completed", "failed")
MISSION_TERMINAL = frozenset({"completed", "failed"})
_KIND_SET = frozenset(("design", "implement", "test", "review", "mergegate", "followup"))
_STATUS_SET = frozenset(("pending", "ready", "assigned", "running", "blocked", "done"))
WORK_KINDS = ("design", "implement", "test", "review", "mergegate", "followup")
WORK_STATUSES = ("pending", "ready", "assigned", "running", "blocked", "done")
WATCH_KINDS = ("pr_checks", "bugbot_comments", "review_comments", "mergeability")
WATCH_STATUSES = ("active", "snoozed", "done")
TRIGGER_ACTIONS = ("create_fix_task", "notify_reviewer", "advance_pipeline")
OBJECTIVE_TYPES = ("issue", "doc")

# Tags binding tasks to work items (§1.8).
TAG_WORK = "mission-work-item"
TAG_REVIEW = "mission-review-task"
TAG_FIX = "mission-fix-task"
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_JSON_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def ts(dt: datetime | None) -> str | None:
    return None if dt is None else json_ts(dt)


def _ts_in(v: Any, name: str, optional: bool = False) -> datetime | None:
    if v is None:
        if optional:
            return None
        raise ValueError(f"missing field `{name}`")
    if type(v) is str and len(v) > 20 and v[-1] == "Z" and v[10] == "T":
        try:  # fast path: what we and tt write (3.11 fromisoformat takes Z and 9 digits)
            return datetime.fromisoformat(v)
        except ValueError:
            pass
    try:
        return parse_ts(v)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: {e}") from None


def _req(d: dict, name: str) -> Any:
    if name not in d:
        raise ValueError(f"missing field `{name}`")
    return d[name]


def _enum(d: dict, name: str, allowed: tuple[str, ...]) -> str:
    v = _req(d, name)
    if v not in allowed:
        raise ValueError(f"{name}: unknown variant {v!r}, expected one of {', '.join(allowed)}")
    return v


def _uuid(v: Any, name: str, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if type(v) is str and _UUID_RE.match(v):
        return v
    if not isinstance(v, str):
        raise ValueError(f"{name}: expected a UUID string, got {v!r}")
    import uuid
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise ValueError(f"{name}: invalid UUID {v!r}") from None


def _uint(d: dict, name: str, hi: int, default: int | None = None) -> int:
    v = d.get(name, default) if default is not None else _req(d, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > hi:
        raise ValueError(f"{name}: expected an unsigned integer, got {v!r}")
    return v


def _bool(d: dict, name: str, default: bool | None = None) -> bool:
    v = d.get(name, default) if default is not None else _req(d, name)
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected a boolean, got {v!r}")
    return v


def _str(d: dict, name: str, optional: bool = False) -> str | None:
    v = d.get(name) if optional else _req(d, name)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{name}: expected a string, got {v!r}")
    return v


def _str_list(d: dict, name: str) -> list[str]:
    v = _req(d, name)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{name}: expected a list of strings")
    return list(v)


def _obj(raw: Any) -> dict:
    if isinstance(raw, (str, bytes)):
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object")
    return raw


# ----------------------------------------------------------------------------- records
@dataclass
class MissionPolicy:
    max_parallel_items: int = 2
    reviewer_required: bool = True
    auto_merge: bool = False
    watch_interval_secs: int = 180

    def to_dict(self) -> dict:
        return {"max_parallel_items": self.max_parallel_items,
                "reviewer_required": self.reviewer_required, "auto_merge": self.auto_merge,
                "watch_interval_secs": self.watch_interval_secs}

    @classmethod
    def from_dict(cls, d: Any) -> "MissionPolicy":
        if not isinstance(d, dict):
            raise ValueError("policy: expected an object")
        # all four are required by tt (no serde defaults)
        return cls(_uint(d, "max_parallel_items", U32), _bool(d, "reviewer_required"),
                   _bool(d, "auto_merge"), _uint(d, "watch_interval_secs", U64))


def objective_issue(owner: str, repo: str, number: int) -> dict:
    return {"type": "issue", "owner": owner, "repo": repo, "number": int(number)}


def objective_doc(path: str) -> dict:
    return {"type": "doc", "path": str(path)}


def _objective(o: Any) -> dict:
    if not isinstance(o, dict) or o.get("type") not in OBJECTIVE_TYPES:
        raise ValueError(f"objective_refs: invalid objective {o!r}")
    if o["type"] == "issue":
        for k in ("owner", "repo"):
            if not isinstance(o.get(k), str):
                raise ValueError(f"objective_refs: issue needs string {k}")
        _uint(o, "number", U64)
        return {"type": "issue", "owner": o["owner"], "repo": o["repo"], "number": o["number"]}
    if not isinstance(o.get("path"), str):
        raise ValueError("objective_refs: doc needs a string path")
    return {"type": "doc", "path": o["path"]}


def objective_display(o: dict) -> str:
    return f"{o['owner']}/{o['repo']}#{o['number']}" if o.get("type") == "issue" else o.get("path", "")


@dataclass
class MissionRun:
    id: str
    objective_refs: list[dict]
    state: str = "planning"
    policy: MissionPolicy = field(default_factory=MissionPolicy)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    next_wake_at: datetime | None = None
    blocked_reason: str | None = None
    dispatcher_last_tick_at: datetime | None = None
    dispatcher_last_progress_at: datetime | None = None
    dispatcher_last_help_request_at: datetime | None = None
    dispatcher_last_help_request_reason: str | None = None
    dispatcher_help_request_attempts: int = 0

    @classmethod
    def new(cls, objectives: list[dict], policy: MissionPolicy | None = None,
            now: datetime | None = None, mid: str | None = None) -> "MissionRun":
        now = now or utcnow()
        return cls(id=mid or new_id(), objective_refs=list(objectives),
                   policy=policy or MissionPolicy(), created_at=now, updated_at=now)

    # transitions (all bump updated_at), as in tt
    def _touch(self, now):
        self.updated_at = now or utcnow()

    def start(self, now=None):
        self.state, self.next_wake_at, self.blocked_reason = "running", None, None
        self._touch(now)

    def block(self, reason: str, now=None):
        self.state, self.blocked_reason = "blocked", reason
        self._touch(now)

    def complete(self, now=None):
        self.state, self.next_wake_at, self.blocked_reason = "completed", None, None
        self._touch(now)

    def fail(self, reason: str, now=None):
        self.state, self.next_wake_at, self.blocked_reason = "failed", None, reason
        self._touch(now)

    def record_dispatch_tick(self, now=None):
        self.dispatcher_last_tick_at = now or utcnow()
        self._touch(now)

    def record_dispatch_progress(self, now=None):
        now = now or utcnow()
        self.dispatcher_last_tick_at = self.dispatcher_last_progress_at = now
        self.dispatcher_help_request_attempts = 0
        self._touch(now)

    def record_help_request(self, reason: str, changed: bool, now=None):
        self.dispatcher_last_help_request_at = now or utcnow()
        self.dispatcher_last_help_request_reason = reason
        self.dispatcher_help_request_attempts = 1 if changed else min(
            U32, self.dispatcher_help_request_attempts + 1)
        self._touch(now)

    def clear_help_request_state(self, now=None):
        self.dispatcher_last_help_request_at = None
        self.dispatcher_last_help_request_reason = None
        self.dispatcher_help_request_attempts = 0
        self._touch(now)

    @property
    def is_terminal(self) -> bool:
        return self.state in MISSION_TERMINAL

    def to_dict(self) -> dict:
        return {"id": self.id, "objective_refs": self.objective_refs, "state": self.state,
                "policy": self.policy.to_dict(), "created_at": ts(self.created_at),
                "updated_at": ts(self.updated_at), "next_wake_at": ts(self.next_wake_at),
                "blocked_reason": self.blocked_reason,
                "dispatcher_last_tick_at": ts(self.dispatcher_last_tick_at),
                "dispatcher_last_progress_at": ts(self.dispatcher_last_progress_at),
                "dispatcher_last_help_request_at": ts(self.dispatcher_last_help_request_at),
                "dispatcher_last_help_request_reason": self.dispatcher_last_help_request_reason,
                "dispatcher_help_request_attempts": self.dispatcher_help_request_attempts}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "MissionRun":
        d = _obj(raw)
        refs = _req(d, "objective_refs")
        if not isinstance(refs, list):
            raise ValueError("objective_refs: expected a list")
        return cls(
            id=_uuid(_req(d, "id"), "id"), objective_refs=[_objective(o) for o in refs],
            state=_enum(d, "state", MISSION_STATES),
            policy=MissionPolicy.from_dict(_req(d, "policy")),
            created_at=_ts_in(d.get("created_at"), "created_at"),
            updated_at=_ts_in(d.get("updated_at"), "updated_at"),
            next_wake_at=_ts_in(d.get("next_wake_at"), "next_wake_at", True),
            blocked_reason=_str(d, "blocked_reason", True),
            dispatcher_last_tick_at=_ts_in(d.get("dispatcher_last_tick_at"), "", True),
            dispatcher_last_progress_at=_ts_in(d.get("dispatcher_last_progress_at"), "", True),
            dispatcher_last_help_request_at=_ts_in(d.get("dispatcher_last_help_request_at"), "",
                                                   True),
            dispatcher_last_help_request_reason=_str(d, "dispatcher_last_help_request_reason",
                                                     True),
            dispatcher_help_request_attempts=_uint(d, "dispatcher_help_request_attempts", U32, 0))


@dataclass
class WorkItem:
    id: str
    mission_id: str
    title: str
    kind: str = "implement"
    depends_on: list[str] = field(default_factory=list)
    owner_role: str | None = None
    status: str = "pending"
    assigned_to: str | None = None
    artifact_refs: list[str] = field(default_factory=list)
    reviewer_approved: bool = False
    source_ref: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    def _touch(self, now):
        self.updated_at = now or utcnow()

    def mark_ready(self, now=None):
        self.status = "ready"
        self._touch(now)

    def assign(self, agent: str, now=None):
        self.assigned_to, self.status, self.reviewer_approved = agent, "assigned", False
        self._touch(now)

    def start(self, now=None):
        self.status = "running"
        self._touch(now)

    def block(self, now=None):
        self.status = "blocked"
        self._touch(now)

    def record_artifacts(self, refs, now=None):
        self.artifact_refs.extend(refs)
        self._touch(now)

    def approve_review(self, now=None):
        self.reviewer_approved = True
        self._touch(now)

    def clear_review_approval(self, now=None):
        self.reviewer_approved = False
        self._touch(now)

    def complete(self, refs=(), now=None):
        self.status = "done"
        self.artifact_refs.extend(refs)
        self._touch(now)

    def to_dict(self) -> dict:
        return {"id": self.id, "mission_id": self.mission_id, "title": self.title,
                "kind": self.kind, "depends_on": self.depends_on, "owner_role": self.owner_role,
                "status": self.status, "assigned_to": self.assigned_to,
                "artifact_refs": self.artifact_refs, "reviewer_approved": self.reviewer_approved,
                "source_ref": self.source_ref, "created_at": ts(self.created_at),
                "updated_at": ts(self.updated_at)}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def _fast(cls, d: dict) -> "WorkItem | None":
        """The common case (records as tt and tinytownd write them) in a few C calls; None →
        the strict path decides (and explains what is wrong)."""
        try:
            m = _UUID_RE.match
            deps, arts = d["depends_on"], d["artifact_refs"]
            ca, ua = d["created_at"], d["updated_at"]
            role, who, src = d.get("owner_role"), d.get("assigned_to"), d.get("source_ref")
            appr = d.get("reviewer_approved", False)
            if not (m(d["id"]) and m(d["mission_id"]) and type(d["title"]) is str
                    and d["kind"] in _KIND_SET and d["status"] in _STATUS_SET
                    and type(deps) is list and all(type(x) is str and m(x) for x in deps)
                    and type(arts) is list and all(type(x) is str for x in arts)
                    and (role is None or type(role) is str) and (src is None or type(src) is str)
                    and (who is None or (type(who) is str and m(who))) and type(appr) is bool
                    and type(ca) is str and ca[-1:] == "Z" and type(ua) is str
                    and ua[-1:] == "Z"):
                return None
            it = cls.__new__(cls)
            it.__dict__.update(id=d["id"], mission_id=d["mission_id"], title=d["title"],
                               kind=d["kind"], depends_on=deps, owner_role=role,
                               status=d["status"], assigned_to=who, artifact_refs=arts,
                               reviewer_approved=appr, source_ref=src,
                               created_at=datetime.fromisoformat(ca),
                               updated_at=datetime.fromisoformat(ua))
            return it
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    @classmethod
    def from_json(cls, raw: Any) -> "WorkItem":
        d = _obj(raw)
        fast = cls._fast(d)
        if fast is not None:
            return fast
        deps = _str_list(d, "depends_on")
        return cls(id=_uuid(_req(d, "id"), "id"), mission_id=_uuid(_req(d, "mission_id"),
                                                                    "mission_id"),
                   title=_str(d, "title"), kind=_enum(d, "kind", WORK_KINDS),
                   depends_on=[_uuid(x, "depends_on") for x in deps],
                   owner_role=_str(d, "owner_role", True), status=_enum(d, "status",
                                                                        WORK_STATUSES),
                   assigned_to=_uuid(d.get("assigned_to"), "assigned_to", True),
                   artifact_refs=_str_list(d, "artifact_refs"),
                   reviewer_approved=_bool(d, "reviewer_approved", False),
                   source_ref=_str(d, "source_ref", True),
                   created_at=_ts_in(d.get("created_at"), "created_at"),
                   updated_at=_ts_in(d.get("updated_at"), "updated_at"))


FAILURE_BACKOFF = (60, 120, 300)


@dataclass
class WatchItem:
    id: str
    mission_id: str
    work_item_id: str
    kind: str = "pr_checks"
    target_ref: str = ""
    interval_secs: int = 180
    next_due_at: datetime = field(default_factory=utcnow)
    status: str = "active"
    on_trigger: str = "create_fix_task"
    last_check_at: datetime | None = None
    consecutive_failures: int = 0

    def is_due(self, now: datetime) -> bool:
        return self.status in ("active", "snoozed") and now >= self.next_due_at

    def record_check(self, now: datetime):
        self.status, self.last_check_at = "active", now
        self.next_due_at = now + timedelta(seconds=self.interval_secs)
        self.consecutive_failures = 0

    def record_failure(self, now: datetime):
        self.status, self.last_check_at = "active", now
        self.consecutive_failures = min(U32, self.consecutive_failures + 1)
        back = FAILURE_BACKOFF[min(self.consecutive_failures, 3) - 1]
        self.next_due_at = now + timedelta(seconds=back)

    def snooze(self, seconds: float, now: datetime):
        self.status, self.next_due_at = "snoozed", now + timedelta(seconds=seconds)

    def complete(self):
        self.status = "done"

    def to_dict(self) -> dict:
        return {"id": self.id, "mission_id": self.mission_id, "work_item_id": self.work_item_id,
                "kind": self.kind, "target_ref": self.target_ref,
                "interval_secs": self.interval_secs, "next_due_at": ts(self.next_due_at),
                "status": self.status, "on_trigger": self.on_trigger,
                "last_check_at": ts(self.last_check_at),
                "consecutive_failures": self.consecutive_failures}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "WatchItem":
        d = _obj(raw)
        return cls(id=_uuid(_req(d, "id"), "id"), mission_id=_uuid(_req(d, "mission_id"),
                                                                    "mission_id"),
                   work_item_id=_uuid(_req(d, "work_item_id"), "work_item_id"),
                   kind=_enum(d, "kind", WATCH_KINDS), target_ref=_str(d, "target_ref"),
                   interval_secs=_uint(d, "interval_secs", U64),
                   next_due_at=_ts_in(d.get("next_due_at"), "next_due_at"),
                   status=_enum(d, "status", WATCH_STATUSES),
                   on_trigger=_enum(d, "on_trigger", TRIGGER_ACTIONS),
                   last_check_at=_ts_in(d.get("last_check_at"), "last_check_at", True),
                   consecutive_failures=_uint(d, "consecutive_failures", U32))


@dataclass
class CommandWatch:
    """tinytownd's offline watch (daemon-side key; tt has no such WatchKind): run `command`
    with `sh -c` in `cwd`; exit 0 = triggered → the watch is done. Same due/backoff rules as tt."""
    id: str
    mission_id: str
    work_item_id: str
    command: str
    interval_secs: int = 30
    cwd: str | None = None
    timeout_secs: float = 60.0
    next_due_at: datetime = field(default_factory=utcnow)
    status: str = "active"
    last_check_at: datetime | None = None
    consecutive_failures: int = 0
    last_exit: int | None = None

    is_due = WatchItem.is_due
    record_check = WatchItem.record_check
    record_failure = WatchItem.record_failure
    complete = WatchItem.complete
    kind = "command"

    def to_json(self) -> str:
        return dumps({"id": self.id, "mission_id": self.mission_id,
                      "work_item_id": self.work_item_id, "command": self.command,
                      "interval_secs": self.interval_secs, "cwd": self.cwd,
                      "timeout_secs": self.timeout_secs, "next_due_at": ts(self.next_due_at),
                      "status": self.status, "last_check_at": ts(self.last_check_at),
                      "consecutive_failures": self.consecutive_failures,
                      "last_exit": self.last_exit})

    @classmethod
    def from_json(cls, raw: Any) -> "CommandWatch":
        d = _obj(raw)
        return cls(id=d["id"], mission_id=d["mission_id"], work_item_id=d["work_item_id"],
                   command=d["command"], interval_secs=int(d.get("interval_secs", 30)),
                   cwd=d.get("cwd"), timeout_secs=float(d.get("timeout_secs", 60.0)),
                   next_due_at=parse_ts(d["next_due_at"]), status=d.get("status", "active"),
                   last_check_at=_ts_in(d.get("last_check_at"), "last_check_at", True),
                   consecutive_failures=int(d.get("consecutive_failures", 0)),
                   last_exit=d.get("last_exit"))


@dataclass
class MissionControlMessage:
    id: str
    mission_id: str
    sender: str
    body: str
    created_at: datetime = field(default_factory=utcnow)
    processed_at: datetime | None = None

    @classmethod
    def new(cls, mission_id: str, sender: str, body: str, now=None) -> "MissionControlMessage":
        return cls(id=new_id(), mission_id=mission_id, sender=sender, body=body,
                   created_at=now or utcnow())

    def to_dict(self) -> dict:
        return {"id": self.id, "mission_id": self.mission_id, "sender": self.sender,
                "body": self.body, "created_at": ts(self.created_at),
                "processed_at": ts(self.processed_at)}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "MissionControlMessage":
        d = _obj(raw)
        return cls(id=_str(d, "id"), mission_id=_uuid(_req(d, "mission_id"), "mission_id"),
                   sender=_str(d, "sender"), body=_str(d, "body"),
                   created_at=_ts_in(d.get("created_at"), "created_at"),
                   processed_at=_ts_in(d.get("processed_at"), "processed_at", True))


# ----------------------------------------------------------------------------- strict validators
_REQUIRED = {
    "mission": ("id", "objective_refs", "state", "policy", "created_at", "updated_at"),
    "work": ("id", "mission_id", "title", "kind", "depends_on", "status", "artifact_refs",
             "created_at", "updated_at"),
    "watch": ("id", "mission_id", "work_item_id", "kind", "target_ref", "interval_secs",
              "next_due_at", "status", "on_trigger", "consecutive_failures"),
    "control": ("id", "mission_id", "sender", "body", "created_at"),
}
_TS_FIELDS = {
    "mission": ("created_at", "updated_at", "next_wake_at", "dispatcher_last_tick_at",
                "dispatcher_last_progress_at", "dispatcher_last_help_request_at"),
    "work": ("created_at", "updated_at"),
    "watch": ("next_due_at", "last_check_at"),
    "control": ("created_at", "processed_at"),
}
_UUID_FIELDS = {"mission": ("id",), "work": ("id", "mission_id", "assigned_to"),
                "watch": ("id", "mission_id", "work_item_id"), "control": ("id", "mission_id")}
_PARSERS = {"mission": MissionRun, "work": WorkItem, "watch": WatchItem,
            "control": MissionControlMessage}


def validate(kind: str, raw: Any) -> list[str]:
    """Problems that would make tt unable to read (or re-read identically) a record."""
    p: list[str] = []
    try:
        d = _obj(raw)
    except ValueError as e:
        return [f"{kind}: {e}"]
    for k in _REQUIRED[kind]:
        if k not in d:
            p.append(f"{kind}.{k}: required field missing")
    for k in _TS_FIELDS[kind]:
        v = d.get(k)
        if v is not None and (not isinstance(v, str) or not _JSON_TS_RE.match(v)):
            p.append(f"{kind}.{k}: {v!r} is not an RFC 3339 UTC timestamp with Z")
    for k in _UUID_FIELDS[kind]:
        v = d.get(k)
        if v is not None and (not isinstance(v, str) or not _UUID_RE.match(v)):
            p.append(f"{kind}.{k}: {v!r} is not a lowercase hyphenated UUID")
    if kind == "work":
        for x in d.get("depends_on") or []:
            if not isinstance(x, str) or not _UUID_RE.match(x):
                p.append(f"work.depends_on: {x!r} is not a lowercase hyphenated UUID")
    if kind == "mission" and "policy" in d:
        pol = d["policy"]
        for k in ("max_parallel_items", "reviewer_required", "auto_merge",
                  "watch_interval_secs"):
            if not isinstance(pol, dict) or k not in pol:
                p.append(f"mission.policy.{k}: required field missing")
    try:
        _PARSERS[kind].from_json(d)
    except (ValueError, KeyError, TypeError) as e:
        p.append(f"{kind}: tt cannot parse it: {e}")
    return p


def validate_mission(raw: Any) -> list[str]:
    return validate("mission", raw)


def validate_work(raw: Any) -> list[str]:
    return validate("work", raw)


def validate_watch(raw: Any) -> list[str]:
    return validate("watch", raw)


def validate_control(raw: Any) -> list[str]:
    return validate("control", raw)


def short(id_: str) -> str:
    return id_[:4]
