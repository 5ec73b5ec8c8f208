"""Watch records and the PR references they target.

* `WatchItem` is tt's `:watch` hash entry: a PR watched for its checks, bot comments, reviews or
  mergeability. `CommandWatch` is tinytownd's offline watch (a daemon-side hash; tt has no such
  kind): a shell command whose exit 0 means "triggered". Both follow tt's rules for when a check
  is due and how failed checks back off.
* A PR is named in free text (a task result) by its URL or as `owner/repo#N`; both spellings are
  one PR, kept as `owner/repo#N` (`pr_refs`). A watch's `target_ref` is read by `parse_pr_ref`.

Pure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tinytownd.store.records import dumps
from tinytownd.store.wire import parse_ts, utcnow

from .fields import (U32, U64, read_enum, read_object, read_required, read_str, read_ts,
                     read_uint, read_uuid, write_ts)

WATCH_KINDS = ("pr_checks", "bugbot_comments", "review_comments", "mergeability")
WATCH_STATUSES = ("active", "snoozed", "done")
TRIGGER_ACTIONS = ("create_fix_task", "notify_reviewer", "advance_pipeline")
FAILURE_BACKOFF = (60, 120, 300)      # seconds after the 1st, 2nd, 3rd+ failed check in a row

# free text: a full https URL, or the short form not glued to a word, path or other ref
_TEXT_PR_URL = re.compile(r"https://github\.com/([^/\s]+)/([^/\s]+)/pull/(\d+)")
_TEXT_PR_SHORT = re.compile(r"(?<![\w./-])([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#(\d+)")
# a target_ref: a URL anywhere in it, or exactly the short form
_REF_URL = re.compile(r"github\.com/([^/\s]+)/([^/\s]+)/pull/(\d+)")
_REF_SHORT = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#(\d+)$")


def _pr(owner: str, repo: str, number) -> str:
    return f"{owner}/{repo}#{number}"


def pr_refs(texts: list[str]) -> list[str]:
    """The PRs named in `texts`, as sorted `owner/repo#N`."""
    refs = set()
    for a in texts:
        for o, r, n in _TEXT_PR_URL.findall(a):
            refs.add(_pr(o, r, n))
        for o, r, n in _TEXT_PR_SHORT.findall(_TEXT_PR_URL.sub(" ", a)):
            refs.add(_pr(o, r, n))
    return sorted(refs)


def parse_pr_ref(ref: str) -> tuple[str, str, int] | None:
    ref = ref.strip()
    m = _REF_URL.search(ref) or _REF_SHORT.match(ref)
    if not m:
        return None
    return m.group(1), m.group(2), int(m.group(3))


def canonical_pr(ref: str) -> str | None:
    p = parse_pr_ref(ref)
    return _pr(*p) if p else None


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
                "interval_secs": self.interval_secs, "next_due_at": write_ts(self.next_due_at),
                "status": self.status, "on_trigger": self.on_trigger,
                "last_check_at": write_ts(self.last_check_at),
                "consecutive_failures": self.consecutive_failures}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: Any) -> "WatchItem":
        d = read_object(raw)
        return cls(id=read_uuid(read_required(d, "id"), "id"),
                   mission_id=read_uuid(read_required(d, "mission_id"), "mission_id"),
                   work_item_id=read_uuid(read_required(d, "work_item_id"), "work_item_id"),
                   kind=read_enum(d, "kind", WATCH_KINDS), target_ref=read_str(d, "target_ref"),
                   interval_secs=read_uint(d, "interval_secs", U64),
                   next_due_at=read_ts(d.get("next_due_at"), "next_due_at"),
                   status=read_enum(d, "status", WATCH_STATUSES),
                   on_trigger=read_enum(d, "on_trigger", TRIGGER_ACTIONS),
                   last_check_at=read_ts(d.get("last_check_at"), "last_check_at", True),
                   consecutive_failures=read_uint(d, "consecutive_failures", U32))


@dataclass
class CommandWatch:
    """Run `command` with `sh -c` in `cwd`; exit 0 = triggered, and the watch is done. Due and
    backoff rules are WatchItem's."""
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
                      "timeout_secs": self.timeout_secs, "next_due_at": write_ts(self.next_due_at),
                      "status": self.status, "last_check_at": write_ts(self.last_check_at),
                      "consecutive_failures": self.consecutive_failures,
                      "last_exit": self.last_exit})

    @classmethod
    def from_json(cls, raw: Any) -> "CommandWatch":
        d = read_object(raw)
        return cls(id=d["id"], mission_id=d["mission_id"], work_item_id=d["work_item_id"],
                   command=d["command"], interval_secs=int(d.get("interval_secs", 30)),
                   cwd=d.get("cwd"), timeout_secs=float(d.get("timeout_secs", 60.0)),
                   next_due_at=parse_ts(d["next_due_at"]), status=d.get("status", "active"),
                   last_check_at=read_ts(d.get("last_check_at"), "last_check_at", True),
                   consecutive_failures=int(d.get("consecutive_failures", 0)),
                   last_exit=d.get("last_exit"))
