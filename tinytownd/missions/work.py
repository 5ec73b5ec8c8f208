"""Work items (tt's `:work` hash entries) and the tags that bind a tt task to one.

A mission task carries `mission:<mid>`, `work-item:<wid>` and a kind tag: the work itself, a
review of it, or a fix of it. `task_tags` writes them and `task_binding` reads them back the way
tt's scheduler does, so tasks created by tt and by tinytownd are recognised alike. Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from tinytownd.store.records import dumps
from tinytownd.store.wire import utcnow

from .fields import (UUID_RE, read_bool, read_enum, read_object, read_required, read_str,
                     read_str_list, read_ts, read_uuid, write_ts)

WORK_KINDS = ("design", "implement", "test", "review", "mergegate", "followup")
WORK_STATUSES = ("pending", "ready", "assigned", "running", "blocked", "done")
_KIND_SET = frozenset(WORK_KINDS)
_STATUS_SET = frozenset(WORK_STATUSES)

TAG_WORK = "mission-work-item"
TAG_REVIEW = "mission-review-task"
TAG_FIX = "mission-fix-task"
_KIND_TAGS = {"work": (TAG_WORK, "mission-task:work"), "review": (TAG_REVIEW, "mission-task:review"),
              "fix": (TAG_FIX, "mission-task:fix")}


def task_tags(kind: str, mid: str, wid: str, extra: Iterable[str] = ()) -> list[str]:
    """The tags of a new mission task of `kind` (work | review | fix). A fix asked for by a
    watch carries `watch:<id>` instead of the generic fix marker, as tt writes it."""
    extra = list(extra)
    tags = [*_KIND_TAGS[kind], f"mission:{mid}", f"work-item:{wid}", *extra]
    if "watch:" in " ".join(extra):
        tags.remove("mission-task:fix")
    return tags


def task_binding(tags: list[str] | None) -> tuple[str | None, str | None, str | None]:
    """(mission id, work item id, kind) from a task's tags; kind is work | review | fix | None."""
    tags = tags or []
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
                "source_ref": self.source_ref, "created_at": write_ts(self.created_at),
                "updated_at": write_ts(self.updated_at)}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def _fast(cls, d: dict) -> "WorkItem | None":
        """The common case (records as tt and tinytownd write them) in a few C calls; None →
        the strict path decides (and explains what is wrong). A mission snapshot reads
        thousands of items per tick."""
        try:
            m = UUID_RE.match
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
        d = read_object(raw)
        fast = cls._fast(d)
        if fast is not None:
            return fast
        deps = read_str_list(d, "depends_on")
        return cls(id=read_uuid(read_required(d, "id"), "id"),
                   mission_id=read_uuid(read_required(d, "mission_id"), "mission_id"),
                   title=read_str(d, "title"), kind=read_enum(d, "kind", WORK_KINDS),
                   depends_on=[read_uuid(x, "depends_on") for x in deps],
                   owner_role=read_str(d, "owner_role", True),
                   status=read_enum(d, "status", WORK_STATUSES),
                   assigned_to=read_uuid(d.get("assigned_to"), "assigned_to", True),
                   artifact_refs=read_str_list(d, "artifact_refs"),
                   reviewer_approved=read_bool(d, "reviewer_approved", False),
                   source_ref=read_str(d, "source_ref", True),
                   created_at=read_ts(d.get("created_at"), "created_at"),
                   updated_at=read_ts(d.get("updated_at"), "updated_at"))
