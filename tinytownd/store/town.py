"""`Town`: every write of a tt record goes through here.

`Town(r, keys)` is what the runtime, the operator CLI, the mission engine and batch runs use to
register agents, create/assign/complete tasks, send messages and emit events. Every record written
here parses under tt's rules (records.py); updates are single-field HSET/HDEL/HINCRBY, never
whole-record rewrites, so concurrent writers (tt, townhall, other daemons) are not undone.

The operations live in one module per record kind — agents.py (AgentRecords), tasks.py
(TaskRecords) — and are methods of Town; this file holds what they share: the client, the Lua
scripts, the raw pipelined write, events, messages, activity and dead letters. Operator control
of an agent (interrupt/resume/close/kill) is agent_control.py.
"""
from __future__ import annotations

from typing import Any

import redis

from .packing import pack as _pack


from . import events, records
from .agents import AgentRecords
from .keys import Keys
from .scripts import Scripts
from .tasks import TaskRecords
from .wire import SUPERVISOR_ID

ACTIVITY_KEPT = 10
ACTIVITY_TTL_S = 3600


class Town(AgentRecords, TaskRecords):
    """Store operations for one town. Greenlet-safe (no state apart from the client)."""

    def __init__(self, r: redis.Redis, keys: Keys, log=None, task_events: str = "lifecycle",
                 durability=None):
        self.r = r
        self.keys = keys
        # which per-task events to write (config runtime.task_events; its owner sets it):
        # lifecycle | terminal (task_completed/task_failed) | none
        self.task_events = task_events
        if log is None:
            from tinytownd.logs import get_logger
            log = get_logger("town", town=keys.town)
        self.log = log
        self.scripts = Scripts(r)
        self.durability = None
        self.set_durability(durability)

    def set_durability(self, durability) -> None:
        """store/durability.Durability (or None): WAIT after the writes that carry work."""
        self.durability = durability
        self.scripts.durability = durability

    # ------------------------------------------------------------------ raw writes
    def send_raw(self, cmds: list[tuple], *, transaction: bool = False) -> list:
        """Send many commands in one write and read the replies (a lean pipeline: hiredis
        packing, no per-command redis-py bookkeeping). Raises the first error reply after
        reading them all. With `transaction`, the commands go inside MULTI/EXEC and the reply
        is EXEC's (an error queueing any command aborts them all); every such write creates or
        assigns tasks, so with a Durability it is followed by a WAIT (store/durability.py)."""
        dur = self.durability if transaction else None
        if transaction:
            cmds = [("MULTI",), *cmds, ("EXEC",)]
        pool = self.r.connection_pool
        conn = pool.get_connection()
        out, err = [], None
        try:
            packed = [b"".join([_pack(c) for c in cmds])]
            if dur is not None:
                packed.append(dur.packed())
            conn.send_packed_command(packed)
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except redis.ResponseError as e:
                    err = err or e
                    out.append(e)
            if dur is not None:
                dur.read(conn)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if err is not None:
            raise err
        return out[-1] if transaction else out

    # ------------------------------------------------------------------ events
    def emit(self, *evs: events.Event, pipe=None) -> None:
        """Queue the events on `pipe`; without one, write them now, best effort (an event that
        cannot be written is logged, never raised)."""
        if pipe is not None:
            for ev in evs:
                events.queue(pipe, self.keys, ev)
            return
        try:
            p = self.r.pipeline(transaction=False)
            for ev in evs:
                events.queue(p, self.keys, ev)
            p.execute()
        except redis.RedisError as e:
            self.log.warning("event not recorded", event_type=evs[0].event_type, error=str(e))

    # ------------------------------------------------------------------ messages
    def send(self, aid: str, mtype: str, *, urgent: bool = False, priority: str = "normal",
             sender: str = SUPERVISOR_ID, pipe=None, **fields: Any) -> str:
        """Queue a message with tt's semantics; returns the message id.

        urgent → LPUSH urgent list; priority high/urgent → LPUSH inbox; else RPUSH inbox (FIFO).
        """
        msg = records.make_message(aid, mtype, sender=sender, priority=priority, **fields)
        raw = records.encode_message(msg)
        p = pipe if pipe is not None else self.r
        if urgent:
            p.lpush(self.keys.urgent(aid), raw)
        elif priority in ("high", "urgent"):
            p.lpush(self.keys.inbox(aid), raw)
        else:
            p.rpush(self.keys.inbox(aid), raw)
        return msg["id"]

    def wake_parked(self, aids: list[str], pipe) -> None:
        """Queue a `ping` at the head of each inbox: a parked agent's BLMOVE returns at once (tt
        reads a ping as informational; the next round consumes it)."""
        for aid in aids:
            pipe.lpush(self.keys.inbox(aid), records.encode_message(
                records.make_message(aid, "ping")))

    def clear_stop(self, aid: str, pipe) -> None:
        """Queue DEL of the agent's stop flag (a worker clears it on start and when it obeys it)."""
        pipe.delete(self.keys.stop(aid))

    # ------------------------------------------------------------------ activity, dead letters
    def log_activity(self, aid: str, text: str, *, pipe=None) -> None:
        """tt's activity list: LPUSH + LTRIM 0 9 + EXPIRE 3600."""
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        key = self.keys.activity(aid)
        p.lpush(key, text)
        p.ltrim(key, 0, ACTIVITY_KEPT - 1)
        p.expire(key, ACTIVITY_TTL_S)
        if pipe is None:
            p.execute()

    def deadletter(self, reason: str, source: str, raw: str | bytes, *, pipe=None,
                   **extra: Any) -> None:
        """Append a dead-letter entry (records.deadletter_entry) and count it; the list keeps its
        newest DEADLETTER_KEPT entries."""
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        p.rpush(self.keys.deadletter, records.deadletter_entry(reason, source, raw, **extra))
        p.ltrim(self.keys.deadletter, -records.DEADLETTER_KEPT, -1)
        p.incr(self.keys.deadletter_count)
        if pipe is None:
            p.execute()

    def requeue_deadletter(self, entry_raw: str, entry: dict, msg: dict) -> str:
        """Put a dead-lettered message back where it came from, in one MULTI: a task_assign's task
        is assigned again with its attempts reset. Returns the list it went to."""
        k = self.keys
        src = entry.get("source") or k.inbox(msg["to"])
        p = self.r.pipeline(transaction=True)
        if msg["type"] == "task_assign":
            tid = msg["task_id"]
            if self.get_task(tid):
                p.hset(k.task(tid), mapping={"state": "assigned", "assigned_to": msg["to"]})
                p.hdel(k.task(tid), "completed_at", "result")
                p.hset(k.task_meta(tid), "attempts", 0)
        if src.startswith(k.prefix + "urgent:"):
            p.lpush(src, entry["raw"])
        else:
            p.rpush(src, entry["raw"])
        p.lrem(k.deadletter, 1, entry_raw)
        p.execute()
        return src
