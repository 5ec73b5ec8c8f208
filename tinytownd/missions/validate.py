"""Strict checks of mission records, for tests: a list of problems, empty when tt can read the
record and it is spelled the way tt writes it (`Z` timestamps, lowercase hyphenated UUIDs, every
required field present). The parsers accept more than tt writes; these checks do not. Pure.
"""
from __future__ import annotations

from typing import Any

from .fields import JSON_TS_RE, UUID_RE, read_object
from .mission import Mission, MissionControlMessage
from .watch import WatchItem
from .work import WorkItem

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
_PARSERS = {"mission": Mission, "work": WorkItem, "watch": WatchItem,
            "control": MissionControlMessage}
_POLICY_FIELDS = ("max_parallel_items", "reviewer_required", "auto_merge", "watch_interval_secs")


def validate(kind: str, raw: Any) -> list[str]:
    """Problems that would make tt unable to read (or re-read identically) a record of `kind`
    (mission | work | watch | control)."""
    p: list[str] = []
    try:
        d = read_object(raw)
    except ValueError as e:
        return [f"{kind}: {e}"]
    for k in _REQUIRED[kind]:
        if k not in d:
            p.append(f"{kind}.{k}: required field missing")
    for k in _TS_FIELDS[kind]:
        v = d.get(k)
        if v is not None and (not isinstance(v, str) or not JSON_TS_RE.match(v)):
            p.append(f"{kind}.{k}: {v!r} is not an RFC 3339 UTC timestamp with Z")
    for k in _UUID_FIELDS[kind]:
        v = d.get(k)
        if v is not None and (not isinstance(v, str) or not UUID_RE.match(v)):
            p.append(f"{kind}.{k}: {v!r} is not a lowercase hyphenated UUID")
    if kind == "work":
        for x in d.get("depends_on") or []:
            if not isinstance(x, str) or not UUID_RE.match(x):
                p.append(f"work.depends_on: {x!r} is not a lowercase hyphenated UUID")
    if kind == "mission" and "policy" in d:
        pol = d["policy"]
        for k in _POLICY_FIELDS:
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
