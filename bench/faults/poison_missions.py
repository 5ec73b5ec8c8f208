"""Poison kinds for mission records and bookkeeping, and for the keys the daemon writes.
"""
from __future__ import annotations

import time
import uuid

import redis

from . import strategies as S
from .harness import wait_until


from .poison import Kind, Poisoner, describe, dump_restore, restore  # noqa: F401
from .poison_queues import _type_kind, _wrong_typed_task  # noqa: F401


# ============================================================================= missions
def _victim_mission(p: Poisoner) -> str:
    mid = p.new_mission()
    wait_until(lambda: p.raw.get(p.k.mission_lock(mid)) is not None, 3)
    return mid


def _mission_undo(p: Poisoner, tok) -> None:
    if not tok:
        return
    mid, extra = tok
    k = p.k
    p.raw.delete(k.mission(mid), k.mission_work(mid), k.mission_watch(mid), k.mission_log(mid),
                 k.mission_control(mid), k.mission_lock(mid), k.mission_meta(mid),
                 k.mission_tasks(mid), k.mission_cmd_watches(mid))
    try:
        p.raw.srem(k.missions_active, mid)
    except redis.RedisError:
        p.raw.delete(k.missions_active)
    if extra:
        restore(p, extra)


def _mission_kind(name: str, keyfn, how: str, fields=("x",)) -> Kind:
    """how: 'set' (string value), 'hash' (hostile fields), 'sadd', 'type' (wrong type)."""
    def inject(p: Poisoner, v):
        mid = _victim_mission(p)
        key = keyfn(p, mid)
        if how == "set":
            p.raw.set(key, v)
        elif how == "hash":
            if fields == ("<work>",):
                wids = p.raw.hkeys(key)
                v = {(wids[0] if wids else b"x"): next(iter(v.values()))}
            p.raw.hset(key, mapping=v)
        elif how == "sadd":
            p.raw.sadd(key, v)
        elif how == "type":
            S.write_type(p.raw, key, v)
        return mid, None
    if how == "set":
        values = lambda p: S.hostile_bytes()    # noqa: E731
    elif how == "hash":
        values = lambda p: S.hostile_hash_fields(fields)   # noqa: E731
    elif how == "sadd":
        values = lambda p: S.hostile_bytes().filter(bool)   # noqa: E731
    else:
        correct = {"dispatch_lock": "string", "mission": "string", "tasks": "set"}.get(
            name.split("-")[1], "hash")
        values = lambda p: S.wrong_type().filter(lambda t: t != correct)   # noqa: E731
    return Kind(name, values, inject, _mission_undo, probes=("mission", "backlog"))


def _global_type_kind(name: str, keyfn, correct: str) -> Kind:
    def inject(p: Poisoner, t):
        key = keyfn(p)
        tok = dump_restore(p, key)
        S.write_type(p.raw, key, t)
        return tok
    return Kind(name, lambda p: S.wrong_type().filter(lambda t: t != correct), inject, restore,
                probes=("mission", "backlog"))


MISSION_KINDS = [
    _mission_kind("mission-record", lambda p, m: p.k.mission(m), "set"),
    _mission_kind("mission-record-type", lambda p, m: p.k.mission(m), "type"),
    _mission_kind("mission-work", lambda p, m: p.k.mission_work(m), "hash", ("<work>",)),
    _mission_kind("mission-work-type", lambda p, m: p.k.mission_work(m), "type"),
    _mission_kind("mission-watch", lambda p, m: p.k.mission_watch(m), "hash", ("w1", "w2")),
    _mission_kind("mission-watch-type", lambda p, m: p.k.mission_watch(m), "type"),
    _mission_kind("mission-control", lambda p, m: p.k.mission_control(m), "hash", ("c1", "c2")),
    _mission_kind("mission-control-type", lambda p, m: p.k.mission_control(m), "type"),
    _mission_kind("mission-meta", lambda p, m: p.k.mission_meta(m), "hash",
                  ("fence", "max_attempts", "attempts:x", "implementer:x")),
    _mission_kind("mission-meta-type", lambda p, m: p.k.mission_meta(m), "type"),
    _mission_kind("mission-tasks", lambda p, m: p.k.mission_tasks(m), "sadd"),
    _mission_kind("mission-tasks-type", lambda p, m: p.k.mission_tasks(m), "type"),
    _mission_kind("mission-cmdwatch", lambda p, m: p.k.mission_cmd_watches(m), "hash", ("w",)),
    _mission_kind("mission-dispatch_lock", lambda p, m: p.k.mission_lock(m), "set"),
    _mission_kind("mission-dispatch_lock-type", lambda p, m: p.k.mission_lock(m), "type"),
    _global_type_kind("missions-active-type", lambda p: p.k.missions_active, "set"),
    _global_type_kind("mission-engines-type", lambda p: p.k.mission_engines, "zset"),
]


def _member_kind(name: str, keyfn, z: bool) -> Kind:
    def inject(p: Poisoner, v):
        (p.raw.zadd(keyfn(p), {v: int(time.time() * 1000)}) if z else p.raw.sadd(keyfn(p), v))
        return v

    def undo(p: Poisoner, v):
        if v is not None:
            (p.raw.zrem if z else p.raw.srem)(keyfn(p), v)
    return Kind(name, lambda p: S.hostile_bytes().filter(bool), inject, undo,
                probes=("mission", "backlog"),
                explicit=lambda p: [b"\xff\xfe", b"../../x", b"*", str(uuid.uuid4()).encode()])


MISSION_KINDS += [
    _member_kind("missions-active-member", lambda p: p.k.missions_active, False),
    _member_kind("mission-engines-member", lambda p: p.k.mission_engines, True),
]


# ============================================================================= write targets
def _daemon_key(p: Poisoner) -> str:
    st_ = p.site.status() or {}
    return p.k.daemon(st_.get("instance", "none"))


WRITE_KINDS = [
    _type_kind("events-stream-type", lambda p: p.k.events, "stream", probes=("victim", "backlog")),
    _type_kind("agent-events-type", lambda p: p.k.agent_events(p.victim), "stream",
               probes=("victim", "backlog")),
    _type_kind("activity-type", lambda p: p.k.activity(p.victim), "list",
               probes=("victim", "backlog")),
    _type_kind("deadletter-type", lambda p: p.k.deadletter, "list",
               probes=("victim", "backlog")),
    _type_kind("daemon-registry-type", _daemon_key, "hash", probes=("victim", "backlog")),
]
