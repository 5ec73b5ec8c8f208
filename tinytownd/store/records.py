"""Tinytown records: build, encode and decode them under tt's parsing rules.

* builders (`new_agent_hash`, `new_task_hash`, `make_message`, `task_assign_json`,
  `deadletter_entry`) produce exactly what tt writes: agents and tasks are flat str→str hashes,
  messages are compact JSON with the flattened `type`; events are built in events.py;
* `decode_message(raw)` reads a message the way tt's serde reader does and raises `Poison(reason)`
  for anything tt could not read (bad JSON, unknown type/priority, missing fields, naive timestamp).
  Extra keys are ignored, like serde;
* `parse_agent` / `parse_task` are tt's lenient reads of the two hashes.
The strict checks of what tinytownd writes (used by the tests) are in validate.py.

Pure: no Redis, no gevent.
"""
from __future__ import annotations

import base64
import json
import re
from typing import Any, Iterable

from .wire import (AGENT_STATES, CONFIRMATION_TYPES, MESSAGE_FIELDS, PRIORITIES, SUPERVISOR_ID,
                   TASK_STATES, hash_ts, is_uuid, json_ts, new_id, parse_ts)

_ANY_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TASK_BEARING = frozenset({"task_assign", "task"})
MESSAGE_MAX_BYTES = 1 << 20       # a queued message larger than this is dead-lettered unread
DEADLETTER_RAW_MAX = 64 << 10     # bytes of a dead value kept in its dead-letter entry
DEADLETTER_KEPT = 10_000          # the dead-letter list keeps its newest entries
class Poison(ValueError):
    """A record tt could not read. `reason` is short and stable (used in dead-letter entries)."""

    def __init__(self, reason: str):
        self.reason = reason if len(reason) <= 200 else reason[:197] + "..."
        super().__init__(self.reason)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)   # (json.dumps with
# options builds a new encoder per call; several messages and events are encoded per round)


def dumps(obj: Any) -> str:
    """Compact JSON as serde_json writes it (no spaces, UTF-8 kept)."""
    return _ENCODER.encode(obj)


def encode_tags(tags) -> str:
    return dumps([str(t) for t in (tags or ())])


def decode_tags(text: str | None) -> list[str]:
    """tt's lenient read: anything unparsable (or absurd: over 64 KiB) is []."""
    if not text or len(text) > 65536:
        return []
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
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
    head, tail = task_assign_parts(to, sender=sender, created_at=created_at, mid=mid)
    return head + dumps(tid) + tail



def task_assign_parts(to: str, *, sender: str = SUPERVISOR_ID, created_at: str | None = None,
                      mid: str | None = None) -> tuple[str, str]:
    """task_assign JSON around its task id: `head + JSON string of the id + tail`. Lua scripts
    that choose the task themselves (lua/claim_backlog.lua) splice the id in between."""
    return (f'{{"id":"{mid or new_id()}","from":"{sender}","to":"{to}","type":"task_assign",'
            '"task_id":', f',"priority":"normal","created_at":"{created_at or json_ts()}",'
            '"correlation_id":null}')


def mission_of(tags: Iterable[str]) -> str | None:
    """The mission id of a task from its `mission:<mid>` tag, if any."""
    for t in tags or ():
        if t.startswith("mission:") and is_uuid(t[8:]):
            return t[8:]
    return None


def utf8_clean(text: str) -> bool:
    """False when `text` holds bytes that are not UTF-8 (read from Redis, they arrive as
    surrogate escapes: the clients decode with errors="surrogateescape", so nothing that any
    client wrote can make a read fail)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_lone_surrogates(obj: Any, depth: int = 0) -> bool:
    """serde_json (tt) refuses a \\u escape that is half a surrogate pair; Python keeps it."""
    if isinstance(obj, str):
        return utf8_clean(obj)
    if depth > 64:
        return True
    if isinstance(obj, dict):
        return all(_no_lone_surrogates(k, depth) and _no_lone_surrogates(v, depth + 1)
                   for k, v in obj.items())
    if isinstance(obj, list):
        return all(_no_lone_surrogates(v, depth + 1) for v in obj)
    return True


def to_bytes(text: str | bytes) -> bytes:
    """The bytes Redis holds for a value read as text (surrogate escapes undone)."""
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def deadletter_entry(reason: str, source: str, raw: str | bytes, **extra: Any) -> str:
    """A dead-letter list entry as JSON (always valid UTF-8, whatever `raw` holds):

      id, reason, source (the key or channel it came from), at, raw_size (bytes),
      raw            the value as text, when it is UTF-8 and at most DEADLETTER_RAW_MAX bytes
      raw_base64     else: its first DEADLETTER_RAW_MAX bytes, base64
      truncated      true when raw_size > DEADLETTER_RAW_MAX
    lua/deadletter.lua writes the same shape (always with raw_base64)."""
    data = to_bytes(raw)
    entry: dict[str, Any] = {"id": new_id(), "reason": reason, "source": source,
                             "at": json_ts(), "raw_size": len(data)}
    head = data[:DEADLETTER_RAW_MAX]
    try:
        if len(data) > DEADLETTER_RAW_MAX:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "truncated")
        entry["raw"] = head.decode("utf-8")
    except UnicodeDecodeError:
        entry["raw_base64"] = base64.b64encode(head).decode("ascii")
        if len(data) > DEADLETTER_RAW_MAX:
            entry["truncated"] = True
    for k, v in extra.items():
        entry[k] = v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
            if isinstance(v, str) else v
    return dumps(entry)


# ----------------------------------------------------------------------------- decoding
def decode_message(raw: Any) -> dict:
    """Parse a queued message as tt does; raise Poison(reason) if tt could not read it (or it
    is too large, or nested too deep for a JSON reader). Never raises anything else."""
    try:
        return _decode_message(raw)
    except Poison:
        raise
    except Exception as e:   # a shape no check above foresaw: still poison, never a crash
        raise Poison(f"unreadable message: {type(e).__name__}") from None


def _decode_message(raw: Any) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "surrogateescape")
    if not isinstance(raw, str):
        raise Poison("not a string")
    if len(raw) > MESSAGE_MAX_BYTES:
        raise Poison(f"over {MESSAGE_MAX_BYTES} bytes")
    if not utf8_clean(raw):
        raise Poison("not UTF-8")
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise Poison(f"bad JSON: {e.msg}") from None
    except RecursionError:
        raise Poison("JSON nested too deep") from None
    if "\\u" in raw and not _no_lone_surrogates(msg):
        raise Poison("bad JSON: lone surrogate in a \\u escape")
    if not isinstance(msg, dict):
        raise Poison("not a JSON object")
    for f in ("id", "from", "to", "type", "priority", "created_at"):
        if f not in msg:
            raise Poison(f"missing field {f!r}")
    for f in ("id", "from", "to"):
        if not isinstance(msg[f], str) or not _ANY_UUID_RE.match(msg[f].lower()):
            raise Poison(f"field {f!r} is not a UUID")
    mtype = msg["type"]
    if not isinstance(mtype, str) or mtype not in MESSAGE_FIELDS:
        raise Poison(f"unknown message type {mtype!r}")
    if not isinstance(msg["priority"], str) or msg["priority"] not in PRIORITIES:
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


NOTE_MAX_BYTES = 64 << 10
_NOTE_FIELDS = {"task": str, "state": str, "mission": str, "batch": str, "event": str,
                "backlog": bool}


def parse_note(data: Any) -> dict:
    """A message of the notify channel ({"task", "state", "mission"?, "backlog"?, ...}); Poison
    when it is not one (any client can PUBLISH there). Unknown keys are dropped."""
    if not isinstance(data, str):
        raise Poison("not a string")
    if len(data) > NOTE_MAX_BYTES:
        raise Poison(f"over {NOTE_MAX_BYTES} bytes")
    if not utf8_clean(data):
        raise Poison("not UTF-8")
    try:
        note = json.loads(data)
    except ValueError as e:
        raise Poison(f"bad JSON: {getattr(e, 'msg', e)}") from None
    except RecursionError:
        raise Poison("JSON nested too deep") from None
    if not isinstance(note, dict):
        raise Poison("not a JSON object")
    out = {}
    for k, kind in _NOTE_FIELDS.items():
        if k in note:
            v = note[k]
            if not isinstance(v, kind) or (kind is str and (len(v) > 256 or not utf8_clean(v))):
                raise Poison(f"field {k!r} is not a short {kind.__name__}")
            out[k] = v
    if "state" in out and out["state"] not in TASK_STATES:
        raise Poison(f"unknown task state {out['state']!r}")
    if not out.get("task") and not out.get("mission"):
        raise Poison("neither a task nor a mission")
    return out


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
