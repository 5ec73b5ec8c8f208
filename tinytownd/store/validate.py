"""Strict checks of the records tinytownd writes: each returns a list of problems (empty = valid).

Stricter than tt's reader on purpose: enums, `+00:00` in hashes and `Z` in JSON, required fields,
lowercase hyphenated UUIDs, tags as a compact JSON array string, counters as decimal strings. The
tests run them on everything the daemon writes.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .events import OPTIONAL_FIELDS as EVENT_OPTIONAL
from .records import Poison, decode_message, dumps
from .wire import (AGENT_STATES, AGENT_TYPES, EVENT_TYPES, MESSAGE_FIELDS, SPAWN_MODES,
                   SUPERVISOR_ID, TASK_STATES, TASK_TERMINAL, parse_ts)

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_ANY_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# RFC 3339 as chrono writes it: 0/3/6/9 fraction digits (Python writes 0 or 6).
_HASH_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00$")
_JSON_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
_DEC_RE = re.compile(r"^(0|[1-9][0-9]*)$")

MESSAGE_KEY_ORDER = ("id", "from", "to", "type")
AGENT_FIELDS = ("id", "name", "nickname", "role_id", "parent_agent_id", "spawn_mode", "agent_type",
                "state", "cli", "current_task", "created_at", "last_heartbeat", "tasks_completed",
                "rounds_completed", "last_active_at")
AGENT_REQUIRED = ("id", "name", "spawn_mode", "agent_type", "state", "cli", "created_at",
                  "last_heartbeat", "tasks_completed", "rounds_completed", "last_active_at")
AGENT_OPTIONAL_UUIDS = ("parent_agent_id", "current_task")
TASK_FIELDS = ("id", "description", "state", "created_at", "updated_at", "tags", "assigned_to",
               "started_at", "completed_at", "result", "parent_id")
TASK_REQUIRED = ("id", "description", "state", "created_at", "updated_at", "tags")

def _check_uuid(v: Any, where: str, problems: list[str], *, v4: bool = True) -> None:
    if not isinstance(v, str) or not (_UUID_RE if v4 else _ANY_UUID_RE).match(v):
        problems.append(f"{where}: {v!r} is not a lowercase hyphenated UUID"
                        + (" v4" if v4 else ""))


def _check_hash_ts(v: Any, where: str, problems: list[str]) -> None:
    if not isinstance(v, str) or not _HASH_TS_RE.match(v):
        problems.append(f"{where}: {v!r} is not RFC 3339 UTC with +00:00")
        return
    try:
        parse_ts(v)
    except ValueError as e:
        problems.append(f"{where}: {e}")


def _check_json_ts(v: Any, where: str, problems: list[str]) -> None:
    if not isinstance(v, str) or not _JSON_TS_RE.match(v):
        problems.append(f"{where}: {v!r} is not RFC 3339 UTC with Z")
        return
    try:
        parse_ts(v)
    except ValueError as e:
        problems.append(f"{where}: {e}")


def validate_agent(h: dict) -> list[str]:
    """Problems with an agent hash as tinytownd writes it (tt-readable, all fields present)."""
    p: list[str] = []
    for f in AGENT_REQUIRED:
        if f not in h:
            p.append(f"agent: missing field {f!r}")
    if p:
        return p
    _check_uuid(h["id"], "agent.id", p, v4=h["id"] != SUPERVISOR_ID)
    if h["state"] not in AGENT_STATES:
        p.append(f"agent.state: {h['state']!r} not in {AGENT_STATES}")
    if h["agent_type"] not in AGENT_TYPES:
        p.append(f"agent.agent_type: {h['agent_type']!r}")
    if h["spawn_mode"] not in SPAWN_MODES:
        p.append(f"agent.spawn_mode: {h['spawn_mode']!r}")
    for f in ("created_at", "last_heartbeat", "last_active_at"):
        _check_hash_ts(h[f], f"agent.{f}", p)
    for f in ("tasks_completed", "rounds_completed"):
        if not isinstance(h[f], str) or not _DEC_RE.match(h[f]):
            p.append(f"agent.{f}: {h[f]!r} is not a decimal counter")
    for f in AGENT_OPTIONAL_UUIDS:
        if f in h:
            _check_uuid(h[f], f"agent.{f}", p, v4=False)
    if not h["name"]:
        p.append("agent.name: empty")
    for f in ("nickname", "role_id"):
        if f in h and not h[f]:
            p.append(f"agent.{f}: present but empty (tt HDELs None)")
    return p


def validate_task(h: dict) -> list[str]:
    p: list[str] = []
    for f in TASK_REQUIRED:
        if f not in h:
            p.append(f"task: missing field {f!r}")
    if p:
        return p
    _check_uuid(h["id"], "task.id", p)
    if h["state"] not in TASK_STATES:
        p.append(f"task.state: {h['state']!r} not in {TASK_STATES}")
    for f in ("created_at", "updated_at", "started_at", "completed_at"):
        if f in h:
            _check_hash_ts(h[f], f"task.{f}", p)
    try:
        tags = json.loads(h["tags"])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            p.append(f"task.tags: {h['tags']!r} is not a JSON array of strings")
        elif h["tags"] != dumps(tags):
            p.append(f"task.tags: {h['tags']!r} is not compact JSON")
    except ValueError:
        p.append(f"task.tags: {h['tags']!r} is not JSON")
    for f in ("assigned_to", "parent_id"):
        if f in h:
            _check_uuid(h[f], f"task.{f}", p, v4=False)
    st = h["state"]
    if st in ("assigned", "running") and "assigned_to" not in h:
        p.append(f"task: state {st} without assigned_to")
    if st == "running" and "started_at" not in h:
        p.append("task: running without started_at")
    if st in TASK_TERMINAL and "completed_at" not in h:
        p.append(f"task: {st} without completed_at")
    return p


def validate_message(raw: Any) -> list[str]:
    """Problems with a queued message JSON as tinytownd writes it."""
    p: list[str] = []
    try:
        msg = decode_message(raw)
    except Poison as e:
        return [f"message: {e.reason}"]
    if isinstance(raw, str) and raw != dumps(json.loads(raw)):
        p.append("message: not compact JSON")
    keys = list(msg)
    if keys[:4] != list(MESSAGE_KEY_ORDER):
        p.append(f"message: key order {keys[:4]} (tt writes id, from, to, type first)")
    for f in ("id",):
        _check_uuid(msg[f], f"message.{f}", p)
    for f in ("from", "to"):
        _check_uuid(msg[f], f"message.{f}", p, v4=msg[f] != SUPERVISOR_ID)
    _check_json_ts(msg["created_at"], "message.created_at", p)
    if "correlation_id" not in msg:
        p.append("message: correlation_id missing (tt writes null)")
    extra = set(msg) - set(MESSAGE_KEY_ORDER) - set(MESSAGE_FIELDS[msg["type"]]) - \
        {"priority", "created_at", "correlation_id"}
    if extra:
        p.append(f"message: unexpected keys {sorted(extra)}")
    return p


def validate_event(fields: dict) -> list[str]:
    """Problems with a stream entry (fields dict) as tinytownd writes it."""
    p: list[str] = []
    if set(fields) != {"event_type", "data"}:
        return [f"event: fields {sorted(fields)} (want event_type, data)"]
    et = fields["event_type"]
    if et not in EVENT_TYPES:
        p.append(f"event: unknown event_type {et!r}")
    try:
        data = json.loads(fields["data"])
    except ValueError:
        return p + ["event: data is not JSON"]
    if not isinstance(data, dict):
        return p + ["event: data is not an object"]
    if data.get("event_type") != et:
        p.append("event: data.event_type differs from the entry's event_type")
    if not isinstance(data.get("message"), str):
        p.append("event: data.message missing or not a string")
    _check_json_ts(data.get("timestamp"), "event.timestamp", p)
    for k, v in data.items():
        if k in ("event_type", "message", "timestamp"):
            continue
        if k not in EVENT_OPTIONAL:
            p.append(f"event: unknown key {k!r}")
        elif v is None:
            p.append(f"event: {k} is null (serde omits None)")
    for k in ("agent_id", "parent_agent_id", "child_agent_id"):
        if k in data:
            _check_uuid(data[k], f"event.{k}", p, v4=data[k] != SUPERVISOR_ID)
    for k in ("old_state", "new_state"):
        if k in data and (data[k][:1].lower() + data[k][1:] not in AGENT_STATES
                          or not data[k][:1].isupper()):
            p.append(f"event.{k}: {data[k]!r} is not a capitalised AgentState")
    if "spawn_mode" in data and data["spawn_mode"] not in SPAWN_MODES:
        p.append(f"event.spawn_mode: {data['spawn_mode']!r}")
    return p

