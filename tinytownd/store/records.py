"""Tinytown records: build, encode, decode and validate them under tt's parsing rules.

Three kinds of functions live here (tinytown-core.md §1, §3):

* builders (`new_agent_hash`, `new_task_hash`, `make_message`, `make_event`) produce exactly what
  tt writes: agents and tasks are flat str→str hashes, messages are compact JSON with the flattened
  `type`, events are the stream fields `event_type` + `data` (JSON TownEvent);
* `decode_message(raw)` reads a message the way tt's serde reader does and raises `Poison(reason)`
  for anything tt could not read (bad JSON, unknown type/priority, missing fields, naive timestamp).
  Extra keys are ignored, like serde;
* `validate_*` are *strict* checks used by tests: they return a list of problems (empty = valid)
  for every record tinytownd writes (enums, `+00:00` in hashes / `Z` in JSON, required fields,
  lowercase hyphenated UUIDs, tags as a compact JSON array string, counters as decimal strings).

Pure: no Redis, no gevent.
"""
from __future__ import annotations

import json
import re
from typing import Any

from tinytownd.store.wire import (AGENT_STATES, AGENT_TYPES, CONFIRMATION_TYPES, EVENT_TYPES, MESSAGE_FIELDS,
                   PRIORITIES, SPAWN_MODES, SUPERVISOR_ID, TASK_STATES, TASK_TERMINAL, debug_state,
                   hash_ts, json_ts, new_id, parse_ts)

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_ANY_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# RFC 3339 as chrono writes it: 0/3/6/9 fraction digits (Python writes 0 or 6).
_HASH_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00$")
_JSON_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
_DEC_RE = re.compile(r"^(0|[1-9][0-9]*)$")

MESSAGE_KEY_ORDER = ("id", "from", "to", "type")
TASK_BEARING = frozenset({"task_assign", "task"})

AGENT_FIELDS = ("id", "name", "nickname", "role_id", "parent_agent_id", "spawn_mode", "agent_type",
                "state", "cli", "current_task", "created_at", "last_heartbeat", "tasks_completed",
                "rounds_completed", "last_active_at")
AGENT_REQUIRED = ("id", "name", "spawn_mode", "agent_type", "state", "cli", "created_at",
                  "last_heartbeat", "tasks_completed", "rounds_completed", "last_active_at")
AGENT_OPTIONAL_UUIDS = ("parent_agent_id", "current_task")
TASK_FIELDS = ("id", "description", "state", "created_at", "updated_at", "tags", "assigned_to",
               "started_at", "completed_at", "result", "parent_id")
TASK_REQUIRED = ("id", "description", "state", "created_at", "updated_at", "tags")
EVENT_OPTIONAL = ("agent_id", "task_id", "mission_id", "old_state", "new_state",
                  "parent_agent_id", "child_agent_id", "scope", "spawn_mode")
_EVENT_OPTIONAL_SET = frozenset(EVENT_OPTIONAL)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)


class Poison(ValueError):
    """A record tt could not read. `reason` is short and stable (used in dead-letter entries)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)   # (json.dumps with
# options builds a new encoder per call; several messages and events are encoded per round)


def dumps(obj: Any) -> str:
    """Compact JSON as serde_json writes it (no spaces, UTF-8 kept)."""
    return _ENCODER.encode(obj)


def encode_tags(tags) -> str:
    return dumps([str(t) for t in (tags or ())])


def decode_tags(text: str | None) -> list[str]:
    """tt's lenient read: anything unparsable is []."""
    if not text:
        return []
    try:
        v = json.loads(text)
    except ValueError:
        return []
    return [str(t) for t in v] if isinstance(v, list) else []


# ----------------------------------------------------------------------------- builders
def new_agent_hash(aid: str, name: str, *, role: str | None = None, cli: str = "",
                   nickname: str | None = None, state: str = "starting", now: str | None = None,
                   parent_agent_id: str | None = None) -> dict[str, str]:
    """Every field `Agent::new` writes (None-valued optionals are simply absent)."""
    now = now or hash_ts()
    h = {"id": aid, "name": name, "spawn_mode": "fresh", "agent_type": "worker", "state": state,
         "cli": cli, "created_at": now, "last_heartbeat": now, "tasks_completed": "0",
         "rounds_completed": "0", "last_active_at": now}
    if nickname:
        h["nickname"] = nickname
    if role:
        h["role_id"] = role
    if parent_agent_id:
        h["parent_agent_id"] = parent_agent_id
    return h


def new_task_hash(tid: str, description: str, *, tags=(), state: str = "pending",
                  assigned_to: str | None = None, parent_id: str | None = None,
                  now: str | None = None) -> dict[str, str]:
    now = now or hash_ts()
    h = {"id": tid, "description": description, "state": state, "created_at": now,
         "updated_at": now, "tags": encode_tags(tags)}
    if assigned_to:
        h["assigned_to"] = assigned_to
    if parent_id:
        h["parent_id"] = parent_id
    return h


def make_message(to: str, mtype: str, *, sender: str = SUPERVISOR_ID, priority: str = "normal",
                 mid: str | None = None, created_at: str | None = None,
                 correlation_id: str | None = None, **fields: Any) -> dict:
    """A message dict in tt's key order. Raises ValueError for an unknown type/priority or
    missing variant fields (we never write what tt cannot read)."""
    if mtype not in MESSAGE_FIELDS:
        raise ValueError(f"unknown message type {mtype!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}")
    msg: dict[str, Any] = {"id": mid or new_id(), "from": sender, "to": to, "type": mtype}
    for f in MESSAGE_FIELDS[mtype]:
        if f not in fields:
            raise ValueError(f"message type {mtype!r} needs field {f!r}")
        msg[f] = fields.pop(f)
    if fields:
        raise ValueError(f"unexpected fields for {mtype!r}: {', '.join(sorted(fields))}")
    msg["priority"] = priority
    msg["created_at"] = created_at or json_ts()
    msg["correlation_id"] = correlation_id
    return msg


def encode_message(msg: dict) -> str:
    return dumps(msg)


def task_assign_json(to: str, tid: str, *, sender: str = SUPERVISOR_ID, created_at: str | None = None,
                     mid: str | None = None) -> str:
    """The exact JSON `tt assign` sends, built without the generic path (hot in bulk assign)."""
    return ('{"id":"%s","from":"%s","to":"%s","type":"task_assign","task_id":%s,'
            '"priority":"normal","created_at":"%s","correlation_id":null}'
            % (mid or new_id(), sender, to, dumps(tid), created_at or json_ts()))


def make_event(event_type: str, message: str, *, timestamp: str | None = None,
               **fields: Any) -> dict[str, str]:
    """Stream entry fields for a TownEvent. None-valued optionals are omitted, like serde."""
    if event_type not in _EVENT_TYPE_SET:
        raise ValueError(f"unknown event type {event_type!r}")
    data: dict[str, Any] = {"event_type": event_type, "message": str(message),
                            "timestamp": timestamp or json_ts()}
    if not _EVENT_OPTIONAL_SET.issuperset(fields):
        unknown = set(fields) - _EVENT_OPTIONAL_SET
        raise ValueError(f"unknown event fields: {', '.join(sorted(unknown))}")
    for k in EVENT_OPTIONAL:          # serde's field order
        if k in fields and fields[k] is not None:
            data[k] = fields[k]
    return {"event_type": event_type, "data": dumps(data)}


def state_change_fields(old: str, new: str) -> dict[str, str]:
    """old_state/new_state in Rust's Debug form (`Working`)."""
    return {"old_state": debug_state(old), "new_state": debug_state(new)}


# ----------------------------------------------------------------------------- decoding
def decode_message(raw: Any) -> dict:
    """Parse a queued message as tt does; raise Poison(reason) if tt could not read it."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Poison("not UTF-8") from None
    if not isinstance(raw, str):
        raise Poison("not a string")
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise Poison(f"bad JSON: {e.msg}") from None
    if not isinstance(msg, dict):
        raise Poison("not a JSON object")
    for f in ("id", "from", "to", "type", "priority", "created_at"):
        if f not in msg:
            raise Poison(f"missing field {f!r}")
    for f in ("id", "from", "to"):
        if not isinstance(msg[f], str) or not _ANY_UUID_RE.match(msg[f].lower()):
            raise Poison(f"field {f!r} is not a UUID")
    mtype = msg["type"]
    if mtype not in MESSAGE_FIELDS:
        raise Poison(f"unknown message type {mtype!r}")
    if msg["priority"] not in PRIORITIES:
        raise Poison(f"unknown priority {msg['priority']!r}")
    try:
        parse_ts(msg["created_at"])
    except (ValueError, TypeError):
        raise Poison(f"bad created_at {msg['created_at']!r} (RFC 3339 with offset required)") \
            from None
    for f in MESSAGE_FIELDS[mtype]:
        if f not in msg:
            raise Poison(f"{mtype} message without field {f!r}")
    if mtype in ("task_assign", "task_done", "task_failed") and not isinstance(msg["task_id"], str):
        raise Poison("task_id is not a string")
    if mtype == "task" and not isinstance(msg["description"], str):
        raise Poison("description is not a string")
    if mtype == "confirmation":
        at = msg["ack_type"]
        if not isinstance(at, dict) or at.get("type") not in CONFIRMATION_TYPES or \
                (at["type"] == "rejected" and not isinstance(at.get("reason"), str)):
            raise Poison("bad ack_type")
    if mtype == "custom" and not (isinstance(msg["kind"], str) and isinstance(msg["payload"], str)):
        raise Poison("custom kind/payload must be strings")
    cid = msg.get("correlation_id")
    if cid is not None and not isinstance(cid, str):
        raise Poison("correlation_id must be a string or null")
    return msg


def message_text(msg: dict) -> str:
    """The human text of a message (for prompts and listings)."""
    t = msg.get("type")
    if t == "task":
        return msg.get("description", "")
    if t == "query":
        return msg.get("question", "")
    if t == "informational":
        return msg.get("summary", "")
    if t == "task_assign":
        return f"task {msg.get('task_id')}"
    if t == "task_done":
        return f"task {msg.get('task_id')} done: {msg.get('result')}"
    if t == "task_failed":
        return f"task {msg.get('task_id')} failed: {msg.get('error')}"
    if t == "confirmation":
        at = msg.get("ack_type") or {}
        return f"{at.get('type')}" + (f": {at.get('reason')}" if at.get("reason") else "")
    if t == "custom":
        return f"[{msg.get('kind')}] {msg.get('payload')}"
    if t == "status_response":
        return f"state {msg.get('state')}, current task {msg.get('current_task')}"
    return t or ""


def is_actionable(msg: dict) -> bool:
    """tt's loop categories (main.rs classify_message): Task/Query/OtherActionable."""
    t = msg.get("type")
    if t in ("task", "task_assign", "query", "status_request", "shutdown"):
        return True
    if t == "custom":
        text = f"{msg.get('kind', '')} {msg.get('payload', '')}".lower()
        if any(w in text for w in ("ack", "thanks", "thank you", "received", "approved")):
            return False
        if any(w in text for w in ("info", "fyi", "status", "update")):
            return False
        return True
    return False


# ----------------------------------------------------------------------------- strict validators
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


def parse_agent(h: dict) -> dict:
    """tt's lenient read of an agent hash (defaults for unparsable fields). None if no id."""
    if not h or "id" not in h:
        return {}
    out = dict(h)
    if out.get("state") not in AGENT_STATES:
        out["state"] = "starting"
    return out


def parse_task(h: dict) -> dict:
    if not h or "id" not in h:
        return {}
    out = dict(h)
    st = out.get("state")
    if st == "in_flight":
        st = "running"
    if st not in TASK_STATES:
        st = "pending"
    out["state"] = st
    return out
