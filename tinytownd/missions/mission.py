"""The mission record, its policy and objectives, and the control notes sent to it.

`Mission` is tt's MissionRun (the string `tt:<town>:mission:<mid>`) and `MissionControlMessage`
an entry of its `:control` hash. `to_json()` writes every field tt's reader requires, in tt's
order, with `Z` timestamps; `from_json()` reads what tt reads (unknown keys ignored; a missing
required field or an unknown enum string is a ValueError). The transition methods are tt's and
all bump `updated_at`. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tinytownd.store.records import dumps
from tinytownd.store.wire import new_id, utcnow

from .fields import (U32, U64, read_bool, read_enum, read_object, read_required, read_str,
                     read_ts, read_uint, read_uuid, write_ts)

MISSION_STATES = ("planning", "running", "blocked", "completed", "failed")
MISSION_TERMINAL = frozenset({"completed", "failed"})
OBJECTIVE_TYPES = ("issue", "doc")

# The first line of the conductor query about a stuck mission; retiring the queries of a mission
# finds them by it.
HELP_MARKER = "[Mission Help Needed] Mission {mid}"


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
        # tt has no defaults for these: all four are required
        return cls(read_uint(d, "max_parallel_items", U32), read_bool(d, "reviewer_required"),
                   read_bool(d, "auto_merge"), read_uint(d, "watch_interval_secs", U64))


def objective_issue(owner: str, repo: str, number: int) -> dict:
    return {"type": "issue", "owner": owner, "repo": repo, "number": int(number)}


def objective_doc(path: str) -> dict:
    return {"type": "doc", "path": str(path)}


def read_objective(o: Any) -> dict:
    if not isinstance(o, dict) or o.get("type") not in OBJECTIVE_TYPES:
        raise ValueError(f"objective_refs: invalid objective {o!r}")
    if o["type"] == "issue":
        for k in ("owner", "repo"):
            if not isinstance(o.get(k), str):
                raise ValueError(f"objective_refs: issue needs string {k}")
        read_uint(o, "number", U64)
        return {"type": "issue", "owner": o["owner"], "repo": o["repo"], "number": o["number"]}
    if not isinstance(o.get("path"), str):
        raise ValueError("objective_refs: doc needs a string path")
    return {"type": "doc", "path": o["path"]}


def objective_display(o: dict) -> str:
    return f"{o['owner']}/{o['repo']}#{o['number']}" if o.get("type") == "issue" else o.get("path", "")


@dataclass
class Mission:
    """tt's MissionRun record: the mission's state, policy and the dispatcher's bookkeeping."""
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
            now: datetime | None = None, mid: str | None = None) -> "Mission":
        now = now or utcnow()
        return cls(id=mid or new_id(), objective_refs=list(objectives),
                   policy=policy or MissionPolicy(), created_at=now, updated_at=now)

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
                "policy": self.policy.to_dict(), "created_at": write_ts(self.created_at),
                "updated_at": write_ts(self.updated_at),
                "next_wake_at": write_ts(self.next_wake_at),
                "blocked_reason": self.blocked_reason,
                "dispatcher_last_tick_at": write_ts(self.dispatcher_last_tick_at),
                "dispatcher_last_progress_at": write_ts(self.dispatcher_last_progress_at),
                "dispatcher_last_help_request_at": write_ts(self.dispatcher_last_help_request_at),
                "dispatcher_last_help_request_reason": self.dispatcher_last_help_request_reason,
                "dispatcher_help_request_attempts": self.dispatcher_help_request_attempts}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "Mission":
        d = read_object(raw)
        refs = read_required(d, "objective_refs")
        if not isinstance(refs, list):
            raise ValueError("objective_refs: expected a list")
        return cls(
            id=read_uuid(read_required(d, "id"), "id"),
            objective_refs=[read_objective(o) for o in refs],
            state=read_enum(d, "state", MISSION_STATES),
            policy=MissionPolicy.from_dict(read_required(d, "policy")),
            created_at=read_ts(d.get("created_at"), "created_at"),
            updated_at=read_ts(d.get("updated_at"), "updated_at"),
            next_wake_at=read_ts(d.get("next_wake_at"), "next_wake_at", True),
            blocked_reason=read_str(d, "blocked_reason", True),
            dispatcher_last_tick_at=read_ts(d.get("dispatcher_last_tick_at"), "", True),
            dispatcher_last_progress_at=read_ts(d.get("dispatcher_last_progress_at"), "", True),
            dispatcher_last_help_request_at=read_ts(d.get("dispatcher_last_help_request_at"), "",
                                                    True),
            dispatcher_last_help_request_reason=read_str(d, "dispatcher_last_help_request_reason",
                                                         True),
            dispatcher_help_request_attempts=read_uint(d, "dispatcher_help_request_attempts",
                                                       U32, 0))


@dataclass
class MissionControlMessage:
    """An operator's note to the mission's dispatcher (tt's `:control` hash entry)."""
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
                "body": self.body, "created_at": write_ts(self.created_at),
                "processed_at": write_ts(self.processed_at)}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "MissionControlMessage":
        d = read_object(raw)
        return cls(id=read_str(d, "id"),
                   mission_id=read_uuid(read_required(d, "mission_id"), "mission_id"),
                   sender=read_str(d, "sender"), body=read_str(d, "body"),
                   created_at=read_ts(d.get("created_at"), "created_at"),
                   processed_at=read_ts(d.get("processed_at"), "processed_at", True))
