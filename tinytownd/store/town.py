"""Synchronous store operations on one town, writing tt-compatible records.

`Town(r, keys)` is what the runtime, the operator CLI, the mission scheduler and batch runs use to
register agents, create/assign/complete tasks, send messages and emit events. Every record written
here parses under tt's rules (see records.py); updates are single-field HSET/HDEL/HINCRBY, never
whole-record rewrites, so concurrent writers (tt, townhall, other daemons) are not undone.

Hot paths (assign, assign_many) queue all their commands in one non-transactional pipeline: the
task hash, the daemon task meta, the inbox message and the events go in one round trip.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import redis

try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover
    _pack = None

from tinytownd.store import records
from tinytownd.store.keys import Keys
from tinytownd.store.scripts import Scripts
from tinytownd.store.wire import (AGENT_TERMINAL, RESERVED_AGENT_NAMES, SUPERVISOR_ID, TASK_TERMINAL,
                   canonical_id, debug_state, hash_ts, is_uuid, new_id)


EVENT_MAXLEN_TOWN = 1000
EVENT_MAXLEN_AGENT = 100
EVENT_MAXLEN_MISSION = 500
SCAN_COUNT = 1000
CHUNK = 500


def mission_of(tags: Iterable[str]) -> str | None:
    """The mission id of a task from its `mission:<mid>` tag, if any."""
    for t in tags or ():
        if t.startswith("mission:") and is_uuid(t[8:]):
            return t[8:]
    return None


def display_name(a: dict) -> str:
    return a.get("nickname") or a.get("name", "")


def display_label(a: dict) -> str:
    role = a.get("role_id")
    inner = role if role and role != "default" else a.get("name", "")
    return f"{display_name(a)} [{inner}]"


class Town:
    """Store operations for one town. Thread/greenlet-safe (stateless apart from the client)."""

    def __init__(self, r: redis.Redis, keys: Keys, log=None):
        self.r = r
        self.keys = keys
        self.k = keys
        if log is None:
            from tinytownd.logs import get_logger
            log = get_logger("town", town=keys.town)
        self.log = log
        self.scripts = Scripts(r)

    # ------------------------------------------------------------------ agents
    def register_agent(self, name: str, *, role: str | None = "worker", cli: str = "",
                       nickname: str | None = None) -> str:
        """Register (or find) the agent called `name`; return its id.

        Idempotent by name: the daemon's name → aid map (HSETNX semantics in Lua) makes a restart
        or a second daemon reuse the record. An agent tt spawned with that exact name is adopted
        instead of creating a twin. The `cli` and `role_id` of an existing record are updated
        field by field when they differ.
        """
        name = name.strip()
        if not name:
            raise ValueError("agent name must not be empty")
        if name.lower() in RESERVED_AGENT_NAMES:
            raise ValueError(f"agent name {name!r} is reserved by Tinytown")
        k = self.k
        cur = self.r.hget(k.agent_names, name)
        if cur:
            rec = self.get_agent(cur)
            if rec:
                self._update_identity(cur, rec, role, cli, nickname)
                return cur
        existing = [a for a in self.list_agents() if a.get("name") == name]
        if existing:
            live = [a for a in existing if a.get("state") not in AGENT_TERMINAL] or existing
            live.sort(key=lambda a: a.get("created_at", ""))
            aid, pairs = live[0]["id"], []
        else:
            aid = new_id()
            h = records.new_agent_hash(aid, name, role=role, cli=cli, nickname=nickname)
            pairs = [x for kv in h.items() for x in kv]
        got, created = self.scripts.register_agent(keys=[k.agent_names],
                                                   args=[k.p, name, aid, *pairs])
        created = int(created)
        if created == 1:
            self.emit("agent_spawned", f"Agent {name} registered", agent_id=got,
                      spawn_mode="fresh")
        else:
            rec = self.get_agent(got)
            if rec:
                self._update_identity(got, rec, role, cli, nickname)
        return got

    def register_agents(self, specs: list[dict]) -> list[str]:
        """Bulk `register_agent` for many agents ({name, role, cli}): one SCAN, pipelined."""
        k = self.k
        if not specs:
            return []
        p = self.r.pipeline(transaction=False)
        for s in specs:
            p.hget(k.agent_names, s["name"])
        mapped = p.execute()
        p = self.r.pipeline(transaction=False)
        for aid in mapped:
            p.hgetall(k.agent(aid)) if aid else p.exists(k.agent_names)
        recs = p.execute(raise_on_error=False)
        need = [i for i, (aid, rec) in enumerate(zip(mapped, recs))
                if not (aid and isinstance(rec, dict) and "id" in rec)]
        by_name: dict[str, list[dict]] = {}
        if need:
            for a in self.list_agents():
                by_name.setdefault(a.get("name", ""), []).append(a)
        out: list[str | None] = [None] * len(specs)
        created: list[tuple[str, str]] = []
        p = self.r.pipeline(transaction=False)
        for i, s in enumerate(specs):
            if i not in need:
                out[i] = mapped[i]
                self._update_identity(mapped[i], recs[i], s.get("role"), s.get("cli", ""), None)
                continue
            name = s["name"]
            if name.lower() in RESERVED_AGENT_NAMES:
                raise ValueError(f"agent name {name!r} is reserved by Tinytown")
            existing = by_name.get(name)
            if existing:
                live = [a for a in existing if a.get("state") not in AGENT_TERMINAL] or existing
                aid, pairs = sorted(live, key=lambda a: a.get("created_at", ""))[0]["id"], []
            else:
                aid = new_id()
                h = records.new_agent_hash(aid, name, role=s.get("role"), cli=s.get("cli", ""))
                pairs = [x for kv in h.items() for x in kv]
            self.scripts.register_agent(keys=[k.agent_names], args=[k.p, name, aid, *pairs],
                                        client=p)
        res = p.execute()
        j = 0
        for i, s in enumerate(specs):
            if out[i] is None:
                got, how = res[j]
                j += 1
                out[i] = got
                if int(how) == 1:
                    created.append((got, s["name"]))
                else:
                    rec = self.get_agent(got)
                    if rec:
                        self._update_identity(got, rec, s.get("role"), s.get("cli", ""), None)
        if created:
            try:
                p = self.r.pipeline(transaction=False)
                for aid, name in created:
                    self._emit_into(p, "agent_spawned", f"Agent {name} registered",
                                    {"agent_id": aid, "spawn_mode": "fresh"})
                p.execute()
            except redis.RedisError as e:
                self.log.warning("event not recorded", event_type="agent_spawned", error=str(e))
        return out  # type: ignore[return-value]

    def _update_identity(self, aid: str, rec: dict, role, cli, nickname) -> None:
        upd = {}
        if cli and rec.get("cli") != cli:
            upd["cli"] = cli
        if role and rec.get("role_id") != role:
            upd["role_id"] = role
        if nickname and rec.get("nickname") != nickname:
            upd["nickname"] = nickname
        if upd:
            self.r.hset(self.k.agent(aid), mapping=upd)

    def get_agent(self, aid: str) -> dict | None:
        try:
            h = self.r.hgetall(self.k.agent(aid))
        except redis.ResponseError:  # WRONGTYPE: a legacy JSON-string agent
            return None
        return h if h and "id" in h else None

    def list_agents(self) -> list[dict]:
        """All agent hashes of the town (SCAN with an escaped pattern; skips unreadable keys)."""
        return self._list(self.k.pattern("agent"))

    def _list(self, pattern: str) -> list[dict]:
        keys = list(self.r.scan_iter(match=pattern, count=SCAN_COUNT))
        out: list[dict] = []
        for i in range(0, len(keys), CHUNK):
            p = self.r.pipeline(transaction=False)
            for key in keys[i:i + CHUNK]:
                p.hgetall(key)
            for h in p.execute(raise_on_error=False):
                if isinstance(h, dict) and "id" in h:
                    out.append(h)
        out.sort(key=lambda h: (h.get("created_at", ""), h.get("name", h.get("id"))))
        return out

    def resolve_agent(self, ref: str) -> str:
        """An agent id from a name, nickname, display label, UUID or 4-char short id (as tt).

        Raises LookupError("unknown agent …" / "ambiguous agent reference …").
        """
        s = (ref or "").strip()
        if not s:
            raise LookupError("unknown agent '': empty reference")
        if s.lower() in RESERVED_AGENT_NAMES:
            return SUPERVISOR_ID
        if is_uuid(s):
            aid = canonical_id(s)
            if aid == SUPERVISOR_ID or self.r.exists(self.k.agent(aid)):
                return aid
            raise LookupError(f"unknown agent {ref!r}: no agent with that id in town "
                              f"{self.k.town!r}")
        low = s.lower()
        matches = [a for a in self.list_agents()
                   if low in (a.get("name", "").lower(), display_name(a).lower(),
                              display_label(a).lower(), a["id"][:4].lower())]
        if len(matches) == 1:
            return matches[0]["id"]
        if not matches:
            raise LookupError(f"unknown agent {ref!r} in town {self.k.town!r}")
        which = ", ".join(f"{a.get('name')} ({a['id']})" for a in matches[:10])
        raise LookupError(f"ambiguous agent reference {ref!r}: matches {which}")

    def set_agent_state(self, aid: str, new: str, *, old: str | None = None, pipe=None,
                        event: bool = True, stamp_active: bool = False) -> None:
        """HSET state (+ heartbeat, + last_active_at) and an agent_state_changed event."""
        now = hash_ts()
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        fields = {"state": new, "last_heartbeat": now}
        if stamp_active:
            fields["last_active_at"] = now
        p.hset(self.k.agent(aid), mapping=fields)
        if event and old != new:
            self._emit_into(p, "agent_state_changed",
                            f"Agent state {debug_state(old or 'starting')} -> {debug_state(new)}",
                            {"agent_id": aid, **records.state_change_fields(old or "starting", new)})
        if pipe is None:
            p.execute()

    # ------------------------------------------------------------------ tasks
    def create_task(self, description: str, *, tags=(), parent_id: str | None = None,
                    pipe=None) -> str:
        """A new `pending` task hash; returns its id."""
        tid, cmd = self.create_task_cmd(description, tags=tags, parent_id=parent_id)
        (pipe or self.r).execute_command(*cmd)
        return tid

    def create_task_cmd(self, description: str, *, tags=(), parent_id: str | None = None
                        ) -> tuple[str, tuple]:
        """A new task id and the HSET that creates its `pending` hash (to send in a batch)."""
        tid = new_id()
        h = records.new_task_hash(tid, description, tags=tags, parent_id=parent_id)
        cmd = ["HSET", self.k.task(tid)]
        for f, v in h.items():
            cmd += (f, v)
        return tid, tuple(cmd)

    def get_task(self, tid: str) -> dict | None:
        try:
            h = self.r.hgetall(self.k.task(tid))
        except redis.ResponseError:
            return None
        return h if h and "id" in h else None

    def list_tasks(self) -> list[dict]:
        return self._list(self.k.pattern("task"))

    def get_task_meta(self, tid: str) -> dict:
        return self.r.hgetall(self.k.task_meta(tid))

    def assign(self, aid: str, description: str = "", *, tags=(), task_id: str | None = None,
               max_attempts: int | None = None, timeout_s: float | None = None,
               meta: dict | None = None, pipe=None, _now: str | None = None) -> str:
        """Assign a task to agent `aid` the way `tt assign` does, in one round trip.

        New task (no `task_id`): full task hash in state `assigned`. Existing task: single-field
        HSET state/assigned_to/updated_at (started_at kept, as tt's Task::assign). Plus the daemon
        task meta (agent, max_attempts, timeout_s, meta), the `task_assign` message (RPUSH inbox)
        and a `task_assigned` event (town + agent stream, + mission stream for mission tasks).
        With `pipe`, the commands are only queued on it.
        """
        known_tags = tags
        if task_id is not None and pipe is None:
            cur = self.get_task(task_id)
            if cur is None:
                raise LookupError(f"unknown task {task_id!r}")
            known_tags = records.decode_tags(cur.get("tags"))
        tid, cmds = self._assign_cmds(aid, description, tags, task_id, max_attempts, timeout_s,
                                      meta, _now or hash_ts(), known_tags)
        if pipe is not None:
            for c in cmds:
                pipe.execute_command(*c)
        else:
            self.send_raw(cmds)
        return tid

    def assign_cmds(self, aid: str, task_id: str, tags, now: str) -> list[tuple]:
        """assign()'s commands for an existing task whose tags are known, for the caller to
        send inside its own transaction."""
        return self._assign_cmds(aid, "", tags, task_id, None, None, None, now, tags)[1]

    def _assign_cmds(self, aid, description, tags, task_id, max_attempts, timeout_s, meta, now,
                     mission_tags) -> tuple[str, list[tuple]]:
        k = self.k
        nz = now.replace("+00:00", "Z")
        if task_id is None:
            tid = new_id()
            hcmd = ("HSET", k.task(tid), "id", tid, "description", description, "state",
                    "assigned", "created_at", now, "updated_at", now, "tags", records.encode_tags(tags),
                    "assigned_to", aid)
        else:
            tid = task_id
            hcmd = ("HSET", k.task(tid), "state", "assigned", "assigned_to", aid, "updated_at", now)
        m = ["HSET", k.task_meta(tid), "agent", aid]
        if max_attempts is not None:
            m += ["max_attempts", str(int(max_attempts))]
        if timeout_s is not None:
            m += ["timeout_s", repr(float(timeout_s))]
        if meta:
            for a, b in meta.items():
                m += [str(a), str(b)]
        mission = mission_of(mission_tags)
        fields = {"agent_id": aid, "task_id": tid}
        if mission:
            fields["mission_id"] = mission
        data = records.make_event("task_assigned", f"Task {tid} assigned", timestamp=nz,
                                 **fields)["data"]
        cmds = [hcmd, tuple(m),
                ("RPUSH", k.inbox(aid), records.task_assign_json(aid, tid, created_at=nz)),
                ("XADD", k.events, "MAXLEN", "~", EVENT_MAXLEN_TOWN, "*", "event_type",
                 "task_assigned", "data", data),
                ("XADD", k.agent_events(aid), "MAXLEN", "~", EVENT_MAXLEN_AGENT, "*",
                 "event_type", "task_assigned", "data", data)]
        if mission:
            cmds.append(("XADD", k.mission_events_stream(mission), "MAXLEN", "~",
                         EVENT_MAXLEN_MISSION, "*", "event_type", "task_assigned", "data", data))
        return tid, cmds

    def send_raw(self, cmds: list[tuple], *, transaction: bool = False) -> list:
        """Send many commands in one write and read the replies (a lean pipeline: hiredis
        packing, no per-command redis-py bookkeeping). Raises the first error reply after
        reading them all. With `transaction`, the commands go inside MULTI/EXEC and the reply
        is EXEC's (an error queueing any command aborts them all)."""
        if _pack is None:
            p = self.r.pipeline(transaction=transaction)
            for c in cmds:
                p.execute_command(*c)
            return p.execute()
        if transaction:
            cmds = [("MULTI",), *cmds, ("EXEC",)]
        pool = self.r.connection_pool
        conn = pool.get_connection()
        out, err = [], None
        try:
            conn.send_packed_command([b"".join([_pack(c) for c in cmds])])
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except redis.ResponseError as e:
                    err = err or e
                    out.append(e)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if err is not None:
            raise err
        return out[-1] if transaction else out

    def assign_many(self, items: list[dict], *, chunk: int = 200, parallel: int = 2) -> list[str]:
        """Bulk assign: each item has `aid` (or `agent`) and `description`, optionally `tags`,
        `task_id`, `max_attempts`, `timeout_s`, `meta`. Sent in chunks of `chunk` tasks, each chunk
        one write (see send_raw); up to `parallel` chunks in flight at once. Existing tasks
        (`task_id`) are not looked up: pass their `tags` for mission events. Returns task ids in
        item order."""
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]

        def one(part: list[dict]) -> list[str]:
            now = hash_ts()
            cmds: list[tuple] = []
            out = []
            for it in part:
                tags = it.get("tags", ())
                tid, c = self._assign_cmds(it.get("aid") or it["agent"], it.get("description", ""),
                                           tags, it.get("task_id"), it.get("max_attempts"),
                                           it.get("timeout_s"), it.get("meta"), now, tags)
                out.append(tid)
                cmds.extend(c)
            self.send_raw(cmds)
            return out

        if parallel <= 1 or len(chunks) <= 1:
            return [t for part in chunks for t in one(part)]
        from gevent.pool import Pool
        return [t for part in Pool(parallel).imap(one, chunks) for t in part]

    def start_task(self, tid: str, aid: str | None = None, *, pipe=None) -> None:
        """assigned → running with started_at (single fields)."""
        now = hash_ts()
        fields = {"state": "running", "started_at": now, "updated_at": now}
        if aid:
            fields["assigned_to"] = aid
        p = pipe if pipe is not None else self.r
        p.hset(self.k.task(tid), mapping=fields)

    def complete_task(self, tid: str, result: str | None = None) -> bool:
        """Complete a task once. False if it was already terminal; LookupError if it is unknown."""
        return self._finish(tid, "completed", "Completed" if result is None else str(result))

    def fail_task(self, tid: str, error: str) -> bool:
        return self._finish(tid, "failed", str(error))

    def cancel_task(self, tid: str, reason: str = "Cancelled") -> bool:
        return self._finish(tid, "cancelled", str(reason))

    def _finish(self, tid: str, state: str, text: str) -> bool:
        k = self.k
        res = self.scripts.finish_task(keys=[k.task(tid)], args=[k.p, state, text, hash_ts(), tid])
        p = self.r.pipeline(transaction=False)
        changed = self.finish_result(p, tid, state, text, res)
        if changed:
            try:
                p.execute()
            except redis.RedisError as e:  # the state change itself is done
                self.log.warning("task event/notify failed", task=tid, error=str(e))
        return changed

    def finish_queue(self, p, tid: str, state: str, text: str, now: str | None = None) -> None:
        """Queue the atomic terminal transition (lua/finish_task.lua) on pipeline `p`; hand its
        reply to finish_result."""
        k = self.k
        self.scripts.finish_task(keys=[k.task(tid)], args=[k.p, state, text, now or hash_ts(), tid],
                                 client=p)

    def finish_result(self, p, tid: str, state: str, text: str, res) -> bool:
        """Interpret finish_task's reply; on a change queue the task event and the notify on
        `p`. Returns True if the task changed; LookupError if it does not exist."""
        code = int(res[0])
        if code < 0:
            raise LookupError(f"unknown task {tid!r}")
        if code == 0:
            return False
        aid, tags = res[1] or None, records.decode_tags(res[2])
        mission = mission_of(tags)
        if state in ("completed", "failed"):
            self._emit_into(p, f"task_{state}",
                            f"Task {tid} {state}" + (f": {text[:200]}" if state == "failed" else ""),
                            {"agent_id": aid, "task_id": tid, "mission_id": mission})
        note = {"task": tid, "state": state}
        if mission:
            note["mission"] = mission
        p.publish(self.k.notify, records.dumps(note))
        return True

    def requeue_task(self, tid: str, *, pipe=None) -> None:
        """tt's Task::requeue: pending, assigned_to/started_at removed."""
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        p.hset(self.k.task(tid), mapping={"state": "pending", "updated_at": hash_ts()})
        p.hdel(self.k.task(tid), "assigned_to", "started_at")
        if pipe is None:
            p.execute()

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
            p.lpush(self.k.urgent(aid), raw)
        elif priority in ("high", "urgent"):
            p.lpush(self.k.inbox(aid), raw)
        else:
            p.rpush(self.k.inbox(aid), raw)
        return msg["id"]

    # ------------------------------------------------------------------ backlog
    def backlog_add(self, description: str, *, tags=(), max_attempts: int | None = None,
                    timeout_s: float | None = None, meta: dict | None = None) -> str:
        """A pending task pushed on the backlog (RPUSH), plus a notify so idle agents claim it."""
        k = self.k
        p = self.r.pipeline(transaction=False)
        tid = self.create_task(description, tags=tags, pipe=p)
        m = {}
        if max_attempts is not None:
            m["max_attempts"] = str(int(max_attempts))
        if timeout_s is not None:
            m["timeout_s"] = repr(float(timeout_s))
        if meta:
            m.update({str(a): str(b) for a, b in meta.items()})
        if m:
            p.hset(k.task_meta(tid), mapping=m)
        p.rpush(k.backlog, tid)
        p.publish(k.notify, records.dumps({"task": tid, "state": "pending", "backlog": True}))
        p.execute()
        return tid

    def backlog_list(self) -> list[str]:
        return self.r.lrange(self.k.backlog, 0, -1)

    # ------------------------------------------------------------------ events
    def emit(self, event_type: str, message: str, **fields: Any) -> None:
        """Best effort: town stream (~1000), agent streams (~100), mission stream (~500)."""
        try:
            p = self.r.pipeline(transaction=False)
            self._emit_into(p, event_type, message, fields)
            p.execute()
        except (redis.RedisError, ValueError) as e:
            self.log.warning("event not recorded", event_type=event_type, error=str(e))

    def _emit_into(self, p, event_type: str, message: str, fields: dict,
                   timestamp: str | None = None) -> None:
        entry = records.make_event(event_type, message, timestamp=timestamp, **fields)
        k = self.k
        p.xadd(k.events, entry, maxlen=EVENT_MAXLEN_TOWN, approximate=True)
        seen = set()
        for f in ("agent_id", "parent_agent_id", "child_agent_id"):
            a = fields.get(f)
            if a and a not in seen:
                seen.add(a)
                p.xadd(k.agent_events(a), entry, maxlen=EVENT_MAXLEN_AGENT, approximate=True)
        if fields.get("mission_id"):
            p.xadd(k.mission_events_stream(fields["mission_id"]), entry,
                   maxlen=EVENT_MAXLEN_MISSION, approximate=True)

    # ------------------------------------------------------------------ control (tt §5.4)
    def _agent_state(self, aid: str) -> str:
        st = self.r.hget(self.k.agent(aid), "state")
        if st is None and not self.r.exists(self.k.agent(aid)):
            raise LookupError(f"unknown agent {aid!r}")
        return records.parse_agent({"id": aid, "state": st})["state"]

    def interrupt(self, aid: str) -> str:
        """paused (refused for terminal agents). Returns the old state."""
        old = self._agent_state(aid)
        if old in AGENT_TERMINAL:
            raise ValueError(f"agent is {old}; cannot interrupt")
        p = self.r.pipeline(transaction=False)
        p.hset(self.k.agent(aid), "state", "paused")
        self.log_activity(aid, "⏸️ Interrupted (paused)", pipe=p)
        self._emit_into(p, "agent_interrupted", "Agent interrupted (paused)",
                        {"agent_id": aid, **records.state_change_fields(old, "paused")})
        p.execute()
        return old

    def resume(self, aid: str) -> str:
        """paused → idle, DEL stop (as tt). A stopped agent is restarted the same way (tt needs
        `tt restart` for that); the runtime then runs it again."""
        old = self._agent_state(aid)
        if old not in ("paused", "stopped"):
            raise ValueError(f"agent is {old}; only a paused or stopped agent can be resumed")
        now = hash_ts()
        p = self.r.pipeline(transaction=False)
        p.hset(self.k.agent(aid), mapping={"state": "idle", "last_heartbeat": now})
        p.delete(self.k.stop(aid))
        self.log_activity(aid, "▶️ Resumed", pipe=p)
        self._emit_into(p, "agent_resumed", "Agent resumed",
                        {"agent_id": aid, **records.state_change_fields(old, "idle")})
        p.execute()
        return old

    def close(self, aid: str) -> str:
        """draining + stop flag: the running round finishes, then the agent stops."""
        old = self._agent_state(aid)
        if old in AGENT_TERMINAL:
            raise ValueError(f"agent is {old}; cannot close")
        p = self.r.pipeline(transaction=False)
        p.hset(self.k.agent(aid), "state", "draining")
        p.set(self.k.stop(aid), "1", ex=3600)
        self.log_activity(aid, "🔻 Closing (draining then stop)", pipe=p)
        self._emit_into(p, "agent_stopped", "Agent closing (draining then stop)",
                        {"agent_id": aid, **records.state_change_fields(old, "draining")})
        p.execute()
        return old

    def kill(self, aid: str) -> str:
        """stop flag + stopped at once; the daemon also kills a running CLI (its task is
        requeued)."""
        old = self._agent_state(aid)
        p = self.r.pipeline(transaction=False)
        p.set(self.k.stop(aid), "1", ex=3600)
        p.hset(self.k.agent(aid), mapping={"state": "stopped", "last_heartbeat": hash_ts()})
        self.log_activity(aid, "🛑 Stop requested", pipe=p)
        self._emit_into(p, "agent_state_changed", "Agent killed",
                        {"agent_id": aid, **records.state_change_fields(old, "stopped")})
        p.execute()
        return old

    # ------------------------------------------------------------------ misc
    def log_activity(self, aid: str, text: str, *, pipe=None) -> None:
        """tt's activity list: LPUSH + LTRIM 0 9 + EXPIRE 3600."""
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        key = self.k.activity(aid)
        p.lpush(key, text)
        p.ltrim(key, 0, 9)
        p.expire(key, 3600)
        if pipe is None:
            p.execute()

    def deadletter(self, reason: str, source: str, raw: str, *, pipe=None, **extra: Any) -> None:
        """RPUSH a dead-letter entry {id, reason, source, raw, at, ...}."""
        entry = {"id": new_id(), "reason": reason, "source": source, "raw": raw,
                 "at": hash_ts().replace("+00:00", "Z"), **extra}
        (pipe if pipe is not None else self.r).rpush(self.k.deadletter, json.dumps(entry))
