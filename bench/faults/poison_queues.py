"""Poison kinds for the work queues: inbox/urgent/in-flight lists, the backlog, task hashes and
meta, agent records, the retry zset, the notify channel.
"""
from __future__ import annotations

import json
import time
import uuid

import redis
from hypothesis import strategies as st

from . import strategies as S
from .harness import tt, wait_until

from tinytownd.store import records

from .poison import Kind, Poisoner, describe, dump_restore, message_is_bad, restore, trial_left  # noqa: F401


# ============================================================================= queues
def _queue_kind(name: str, keyfn, push: str) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        (p.raw.lpush if push == "l" else p.raw.rpush)(key, v)
        return v

    def undo(p: Poisoner, v):
        if v is None:
            return
        a = p.victim
        for key in (p.k.inbox(a), p.k.urgent(a), p.k.inflight(a), p.k.inflight_urgent(a)):
            try:
                p.raw.lrem(key, 0, v)
            except redis.RedisError:
                pass

    def explicit(p: Poisoner):
        tid = str(uuid.uuid4())
        return [b"\xff\xfe not utf-8", S._deep(100_000, "list"), b"", b"x" * (4 << 20),
                json.dumps({"id": str(uuid.uuid4()), "from": "00000000-0000-0000-0000-000000000001",
                            "to": p.victim, "type": "task_assign", "task_id": 12345,
                            "priority": "normal", "created_at": "2024-01-01T00:00:00Z"}).encode(),
                records.task_assign_json(p.victim, tid).replace('Z"', '"').encode()]
    return Kind(name, lambda p: S.hostile_message(p.victim), inject, undo, explicit,
                deadletter=True, is_bad=message_is_bad)


def _type_kind(name: str, keyfn, correct: str, probes=("backlog",), after=None) -> Kind:
    def inject(p: Poisoner, t):
        key = keyfn(p)
        tok = dump_restore(p, key)
        S.write_type(p.raw, key, t)
        return tok
    return Kind(name, lambda p: S.wrong_type().filter(lambda t: t != correct), inject, restore,
                probes=probes, after=after)


QUEUE_KINDS = [
    _queue_kind("inbox", lambda p: p.k.inbox(p.victim), "r"),
    _queue_kind("urgent", lambda p: p.k.urgent(p.victim), "l"),
    _queue_kind("inflight", lambda p: p.k.inflight(p.victim), "r"),
    _queue_kind("inflight_urgent", lambda p: p.k.inflight_urgent(p.victim), "r"),
    _type_kind("inbox-wrong-type", lambda p: p.k.inbox(p.victim), "list"),
    _type_kind("urgent-wrong-type", lambda p: p.k.urgent(p.victim), "list"),
]


# ============================================================================= backlog
def _backlog_inject(p: Poisoner, v):
    vals = v if isinstance(v, list) else [v]
    p.raw.rpush(p.k.backlog, *vals)
    return vals


def _backlog_undo(p: Poisoner, vals):
    for v in vals or ():
        try:
            p.raw.lrem(p.k.backlog, 0, v)
        except redis.RedisError:
            pass


def _backlog_accounted(p: Poisoner, v, vals, dls) -> bool:
    """Dead-lettered, or taken off the backlog."""
    if any(d.get("source") == p.k.backlog and d.get("reason") for d in dls):
        return True
    try:
        left = set(p.raw.lrange(p.k.backlog, 0, -1))
    except redis.RedisError:
        return False
    return not any(x in left for x in (vals or ()))


def _backlog_values(p: Poisoner):
    return st.one_of(S.hostile_bytes(), st.just(str(uuid.uuid4()).encode()),
                     st.builds(lambda: _wrong_typed_task(p)))


def _wrong_typed_task(p: Poisoner) -> bytes:
    tid = str(uuid.uuid4())
    p.raw.set(p.k.task(tid), b"not a hash")
    return tid.encode()


BACKLOG_KINDS = [
    Kind("backlog-entry", _backlog_values, _backlog_inject, _backlog_undo,
         explicit=lambda p: [[f"ghost-{i}".encode() for i in range(150)], b"\xff\xfe", b"",
                             str(uuid.uuid4()).encode(), _wrong_typed_task(p)],
         probes=("backlog",), accounted=_backlog_accounted),
    _type_kind("backlog-wrong-type", lambda p: p.k.backlog, "list", probes=("victim",)),
]


# ============================================================================= tasks
def _task_with(p: Poisoner, *, task=None, task_type=None, meta=None, meta_type=None):
    """A task for the victim whose hash / meta is hostile, and its task_assign message."""
    tid = str(uuid.uuid4())
    k, a = p.k, p.victim
    tkey, mkey = k.task(tid), k.task_meta(tid)
    good = records.new_task_hash(tid, "poisoned task", state="assigned", assigned_to=a)
    pipe = p.raw.pipeline(transaction=True)
    pipe.hset(tkey, mapping=good)
    pipe.hset(mkey, mapping={"agent": a})
    pipe.execute()
    if task is not None:
        p.raw.hset(tkey, mapping=task)
    if task_type is not None:
        S.write_type(p.raw, tkey, task_type)
    if meta is not None:
        p.raw.hset(mkey, mapping=meta)
    if meta_type is not None:
        S.write_type(p.raw, mkey, meta_type)
    msg = records.task_assign_json(a, tid).encode()
    p.raw.rpush(k.inbox(a), msg)
    return tid, msg


def _task_undo(p: Poisoner, tok):
    if not tok:
        return
    tid, msg = tok
    p.raw.delete(p.k.task(tid), p.k.task_meta(tid))
    a = p.victim
    for key in (p.k.inbox(a), p.k.inflight(a)):
        p.raw.lrem(key, 0, msg)


def _task_accounted(p: Poisoner, v, tok, dls) -> bool:
    """The task reached a terminal state, or its message was dead-lettered with a reason."""
    if not tok:
        return False
    tid, _msg = tok
    if any(d.get("reason") and (d.get("task") == tid or tid in str(d.get("raw", "")))
           for d in dls):
        return True
    wait_until(lambda: _tstate(p, tid) in ("completed", "failed", "cancelled"), 2.0)
    return _tstate(p, tid) in ("completed", "failed", "cancelled")


def _tstate(p: Poisoner, tid: str):
    try:
        return p.raw.hget(p.k.task(tid), "state").decode("utf-8", "replace")
    except (redis.RedisError, AttributeError):
        return None


TASK_FIELDS = ("id", "description", "state", "tags", "assigned_to", "created_at", "updated_at",
               "started_at", "result", "parent_id")
META_FIELDS = ("attempts", "max_attempts", "timeout_s", "last_error", "agent", "batch",
               "mission", "work_item")

TASK_KINDS = [
    Kind("task-hash-fields", lambda p: S.hostile_hash_fields(TASK_FIELDS),
         lambda p, v: _task_with(p, task=v), _task_undo,
         explicit=lambda p: [{b"state": b"\xff"}, {b"tags": S._deep(100_000, "list")},
                             {b"description": b"\xff\xfe" * 10},
                             {b"assigned_to": b"x" * (1 << 20)}],
         accounted=_task_accounted),
    Kind("task-hash-wrong-type", lambda p: S.wrong_type().filter(lambda t: t != "hash"),
         lambda p, t: _task_with(p, task_type=t), _task_undo, accounted=_task_accounted),
    Kind("task-meta-fields", lambda p: S.hostile_hash_fields(META_FIELDS),
         lambda p, v: _task_with(p, meta=v), _task_undo,
         explicit=lambda p: [{b"attempts": b"abc"}, {b"max_attempts": b"1e999"},
                             {b"timeout_s": b"nan"}, {b"timeout_s": b"-1"},
                             {b"max_attempts": b"99999999999999999999999"}],
         accounted=_task_accounted),
    Kind("task-meta-wrong-type", lambda p: S.wrong_type().filter(lambda t: t != "hash"),
         lambda p, t: _task_with(p, meta_type=t), _task_undo, accounted=_task_accounted),
]


# ============================================================================= agents
AGENT_FIELDS = ("state", "name", "role_id", "current_task", "last_heartbeat", "rounds_completed",
                "tasks_completed", "last_active_at", "cli", "nickname", "id", "created_at")
INFO_FIELDS = ("owner", "pid", "round", "round_started_at", "last_exit", "cli", "task",
               "started_at")


def _hash_fields_kind(name: str, keyfn, fields, explicit=None) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        tok = dump_restore(p, key)
        p.raw.hset(key, mapping=v)
        return tok
    return Kind(name, lambda p: S.hostile_hash_fields(fields), inject, restore,
                explicit=explicit or (lambda p: []))


def _reload(p: Poisoner) -> None:
    r = tt("reload", "-c", p.site.d.cfg_path, timeout=30)
    if r.returncode not in (0,):
        raise RuntimeError(f"reload exit {r.returncode}: {r.stderr.decode(errors='replace')[-200:]}")


def _set_kind(name: str, keyfn, probes=("victim", "backlog"), explicit=None, after=None,
              accounted=None) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        tok = dump_restore(p, key)
        p.raw.set(key, v)
        return tok
    return Kind(name, lambda p: S.hostile_bytes(), inject, restore, probes=probes,
                explicit=explicit or (lambda p: []), after=after, accounted=accounted)


def _stop_undo(p: Poisoner, tok) -> None:
    restore(p, tok)
    tt("resume", "w-1", "-c", p.site.d.cfg_path, timeout=20)
    wait_until(lambda: p.site.wait_agents(0.5), 10)


def _stop_accounted(p: Poisoner, v, tok, dls) -> bool:
    """A stop flag (any value) stops the agent cleanly: that is its meaning."""
    st_ = wait_until(lambda: p.raw.hget(p.k.agent(p.victim), "state") == b"stopped", 5)
    return bool(st_)


AGENT_KINDS = [
    _hash_fields_kind("agent-hash-fields", lambda p: p.k.agent(p.victim), AGENT_FIELDS,
                      explicit=lambda p: [{b"rounds_completed": b"abc"},
                                          {b"tasks_completed": b"1e999"},
                                          {b"state": b"\xff"}, {b"last_heartbeat": b"yesterday"},
                                          {b"current_task": b"\xff" * 40}]),
    _type_kind("agent-hash-wrong-type", lambda p: p.k.agent(p.victim), "hash",
               probes=("victim", "backlog")),
    _hash_fields_kind("agent-info-fields", lambda p: p.k.agent_info(p.victim), INFO_FIELDS),
    _type_kind("agent-info-wrong-type", lambda p: p.k.agent_info(p.victim), "hash",
               probes=("victim", "backlog")),
    Kind("agent-names-fields",
         lambda p: st.one_of(S.hostile_hash_fields(("w-1", "w-2", "x")),
                             st.just({b"w-1": str(uuid.uuid4()).encode()})),
         lambda p, v: (lambda tok: (p.raw.hset(p.k.agent_names, mapping=v), tok)[1])(
             dump_restore(p, p.k.agent_names)), restore,
         probes=("victim", "backlog", "mission"), after=_reload),
    _type_kind("agent-names-wrong-type", lambda p: p.k.agent_names, "hash",
               probes=("victim", "backlog", "mission"), after=_reload),
    _set_kind("lease-value", lambda p: p.k.agent_lease(p.victim),
              explicit=lambda p: [b"another-daemon somehost 1", b""]),
    _type_kind("lease-wrong-type", lambda p: p.k.agent_lease(p.victim), "string",
               probes=("victim", "backlog")),
    _set_kind("stop-flag", lambda p: p.k.stop(p.victim), probes=("backlog",),
              accounted=_stop_accounted),
]
AGENT_KINDS[-1].undo = _stop_undo
AGENT_KINDS.append(Kind("stop-flag-wrong-type", lambda p: S.wrong_type(),
                        lambda p, t: (lambda tok: (S.write_type(p.raw, p.k.stop(p.victim), t),
                                                   tok)[1])(dump_restore(p, p.k.stop(p.victim))),
                        _stop_undo, probes=("backlog",), accounted=_stop_accounted))


# ============================================================================= delayed
def _envelope(p: Poisoner):
    a = p.victim
    keys = st.sampled_from([p.k.inbox(a), p.k.task(str(uuid.uuid4())), "ballast-foreign-key",
                            "tt:other-town:inbox:x", p.k.deadletter, ""])
    env = st.fixed_dictionaries({"key": st.one_of(keys, S.json_value()),
                                 "raw": st.one_of(S.json_value(), st.just("x"))},
                                optional={"head": S.json_value(), "id": S.json_value()})
    return st.one_of(S.hostile_bytes(), env.map(S.dumps))


def _delayed_inject(p: Poisoner, v):
    if v.startswith(b'{"key": "tt:ft:task:'):   # make the target a real hash (WRONGTYPE)
        key = json.loads(v)["key"]
        p.raw.hset(key, "id", "x")
    p.raw.zadd(p.k.delayed, {v: int(time.time() * 1000) - 1000})
    return v


def _delayed_undo(p: Poisoner, v):
    if v is not None:
        p.raw.zrem(p.k.delayed, v)
    p.raw.delete("ballast-foreign-key", "tt:other-town:inbox:x")


def _delayed_accounted(p: Poisoner, v, tok, dls) -> bool:
    """Dead-lettered with its source, or delivered to a queue of this town."""
    if any(d.get("reason") and d.get("source") == p.k.delayed for d in dls):
        return True
    try:
        env = json.loads(v)
        key = env.get("key") if isinstance(env, dict) else None
    except ValueError:
        key = None
    try:
        still = p.raw.zscore(p.k.delayed, v) is not None
    except redis.RedisError:
        still = True
    if still:
        return False
    if key in ("ballast-foreign-key", "tt:other-town:inbox:x"):
        p.res.note(f"delayed envelope delivered to a key outside the town's queues: {key}")
        return False
    return isinstance(key, str) and key.startswith(f"tt:{p.k.town}:") and \
        (":inbox:" in key or ":urgent:" in key)


DELAYED_KINDS = [
    Kind("delayed-envelope", _envelope, _delayed_inject, _delayed_undo,
         explicit=lambda p: [b"\xff\xfe", S._deep(100_000, "dict"),
                             json.dumps({"key": p.k.task(str(uuid.uuid4())), "raw": "x"}).encode(),
                             json.dumps({"key": "ballast-foreign-key", "raw": "x"}).encode()],
         probes=("retry", "backlog"), accounted=_delayed_accounted, deadletter=True),
    _type_kind("delayed-wrong-type", lambda p: p.k.delayed, "zset", probes=("retry", "backlog")),
]


# ============================================================================= notify
def _notify_values(p: Poisoner):
    note = st.fixed_dictionaries({}, optional={
        "task": st.one_of(S.json_value(), st.just(str(uuid.uuid4()))),
        "state": st.one_of(S.json_value(), st.sampled_from(("completed", "failed", "pending"))),
        "mission": S.json_value(), "backlog": S.json_value(), "event": S.json_value()})
    return st.one_of(S.hostile_bytes(), note.map(S.dumps))


def _notify_inject(p: Poisoner, v):
    p.raw.publish(p.k.notify, v)
    return None


NOTIFY_KINDS = [
    Kind("notify", _notify_values, _notify_inject, lambda p, t: None,
         explicit=lambda p: [b"\xff\xfe", S._deep(100_000, "list"),
                             b'{"task": ["x"], "state": "completed"}',
                             b'{"mission": {"a": 1}, "event": "started"}',
                             json.dumps({"task": _wrong_typed_task(p).decode(),
                                         "state": "completed"}).encode()],
         probes=("backlog", "mission")),
]
