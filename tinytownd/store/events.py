"""Town events: one builder per event type, and the streams each event goes on.

An event is tt's TownEvent: a stream entry of two fields, `event_type` and `data` (the TownEvent as
compact JSON, None-valued optionals omitted as serde does). It is appended (XADD MAXLEN ~) to the
town stream, to the stream of every agent it names (agent_id, parent_agent_id, child_agent_id) and
to its mission's stream (mission_id). Builders return an `Event`; `queue` puts one on a redis-py
pipeline, `commands` gives the raw XADDs for a hiredis-packed write, and Lua scripts that append
an event themselves take `Event.data` and the MAXLEN values as arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import Keys
from .records import dumps, utf8_clean
from .wire import EVENT_TYPES, debug_state, json_ts

TOWN_MAXLEN = 1000
AGENT_MAXLEN = 100
MISSION_MAXLEN = 500

OPTIONAL_FIELDS = ("agent_id", "task_id", "mission_id", "old_state", "new_state",
                   "parent_agent_id", "child_agent_id", "scope", "spawn_mode")
_OPTIONAL = frozenset(OPTIONAL_FIELDS)
_TYPES = frozenset(EVENT_TYPES)
_AGENT_FIELDS = ("agent_id", "parent_agent_id", "child_agent_id")


@dataclass(frozen=True)
class Event:
    event_type: str
    data: str                    # the TownEvent JSON
    agents: tuple[str, ...]      # agent streams it also goes on
    mission: str | None          # mission stream it also goes on

    def fields(self) -> dict[str, str]:
        return {"event_type": self.event_type, "data": self.data}


def _text(v):
    """Event JSON is UTF-8 for every reader: bytes that were not (read from a junk record)
    become U+FFFD."""
    if isinstance(v, str) and not utf8_clean(v):
        return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return v


def build(event_type: str, message: str, *, timestamp: str | None = None,
          **fields: Any) -> Event:
    """Any TownEvent (the typed builders below are what the daemon uses)."""
    if event_type not in _TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if not _OPTIONAL.issuperset(fields):
        raise ValueError(f"unknown event fields: {', '.join(sorted(set(fields) - _OPTIONAL))}")
    data: dict[str, Any] = {"event_type": event_type, "message": _text(str(message)),
                            "timestamp": timestamp or json_ts()}
    for k in OPTIONAL_FIELDS:          # serde's field order
        if fields.get(k) is not None:
            data[k] = _text(fields[k])
    agents: list[str] = []
    for f in _AGENT_FIELDS:
        a = fields.get(f)
        if a and a not in agents:
            agents.append(a)
    return Event(event_type, dumps(data), tuple(agents), fields.get("mission_id") or None)


def _states(old: str, new: str) -> dict[str, str]:
    """old_state/new_state in Rust's Debug form (`Working`)."""
    return {"old_state": debug_state(old), "new_state": debug_state(new)}


# ----------------------------------------------------------------------------- agent events
def agent_state_changed(aid: str, old: str, new: str, message: str | None = None, *,
                        timestamp: str | None = None) -> Event:
    text = message or f"Agent state {debug_state(old)} -> {debug_state(new)}"
    return build("agent_state_changed", text, timestamp=timestamp, agent_id=aid,
                 **_states(old, new))


def agent_spawned(aid: str, name: str) -> Event:
    return build("agent_spawned", f"Agent {name} registered", agent_id=aid, spawn_mode="fresh")


def agent_stopped(aid: str, message: str, *, old: str | None = None,
                  new: str | None = None) -> Event:
    states = _states(old, new) if old and new else {}
    return build("agent_stopped", message, agent_id=aid, **states)


def agent_interrupted(aid: str, old: str) -> Event:
    return build("agent_interrupted", "Agent interrupted (paused)", agent_id=aid,
                 **_states(old, "paused"))


def agent_resumed(aid: str, old: str) -> Event:
    return build("agent_resumed", "Agent resumed", agent_id=aid, **_states(old, "idle"))


# ----------------------------------------------------------------------------- task events
def task_assigned(tid: str, aid: str, *, mission: str | None = None, message: str | None = None,
                  from_agent: str | None = None, timestamp: str | None = None) -> Event:
    """`from_agent`: the dead agent a recovery took the task from (parent_agent_id)."""
    return build("task_assigned", message or f"Task {tid} assigned", timestamp=timestamp,
                 agent_id=aid, task_id=tid, mission_id=mission, parent_agent_id=from_agent)


def task_completed(tid: str, aid: str | None, *, mission: str | None = None,
                   timestamp: str | None = None) -> Event:
    return build("task_completed", f"Task {tid} completed", timestamp=timestamp,
                 agent_id=aid or None, task_id=tid, mission_id=mission)


def task_failed(tid: str, aid: str | None, error: str, *, mission: str | None = None) -> Event:
    return build("task_failed", f"Task {tid} failed: {error[:200]}", agent_id=aid or None,
                 task_id=tid, mission_id=mission)


# ----------------------------------------------------------------------------- mission events
def mission_event(mid: str, text: str, *, timestamp: str | None = None) -> Event:
    return build("mission_event", text, timestamp=timestamp, mission_id=mid)


# ----------------------------------------------------------------------------- writing
def streams(keys: Keys, ev: Event) -> list[tuple[str, int]]:
    """(stream key, MAXLEN) of every stream the event goes on."""
    out = [(keys.events, TOWN_MAXLEN)]
    out += [(keys.agent_events(a), AGENT_MAXLEN) for a in ev.agents]
    if ev.mission:
        out.append((keys.mission_events_stream(ev.mission), MISSION_MAXLEN))
    return out


def commands(keys: Keys, ev: Event) -> list[tuple]:
    """The XADD commands of one event, for Town.send_raw."""
    return [("XADD", key, "MAXLEN", "~", maxlen, "*", "event_type", ev.event_type, "data",
             ev.data) for key, maxlen in streams(keys, ev)]


def queue(p, keys: Keys, ev: Event) -> None:
    """Queue the event's XADDs on a redis-py pipeline."""
    fields = ev.fields()
    for key, maxlen in streams(keys, ev):
        p.xadd(key, fields, maxlen=maxlen, approximate=True)
