"""Task records of a town: create, assign (one or many), finish once, the backlog.

Part of `Town` (store/town.py). An assignment is what `tt assign` writes, plus the daemon's task
meta: the task hash (full for a new task, single fields for an existing one), the daemon meta
(agent, max_attempts, timeout_s, extra fields), the `task_assign` message (RPUSH inbox) and a
`task_assigned` event. Its commands go out in one hiredis-packed write (Town.send_raw); a caller
that needs them inside its own transaction takes them from `assign_cmds`.
"""
from __future__ import annotations

from typing import Any

import redis

from . import events, records
from .scripts import source
from .wire import hash_ts, new_id


def _meta_fields(max_attempts: int | None, timeout_s: float | None, meta: dict | None) -> list:
    m: list[str] = []
    if max_attempts is not None:
        m += ["max_attempts", str(int(max_attempts))]
    if timeout_s is not None:
        m += ["timeout_s", repr(float(timeout_s))]
    for a, b in (meta or {}).items():
        m += [str(a), str(b)]
    return m


class TaskRecords:
    """Task operations of `Town` (self.r, self.keys, self.scripts, self.send_raw come from it)."""

    # ------------------------------------------------------------------ create / read
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
        cmd = ["HSET", self.keys.task(tid)]
        for f, v in h.items():
            cmd += (f, v)
        return tid, tuple(cmd)

    def get_task(self, tid: str) -> dict | None:
        try:
            h = self.r.hgetall(self.keys.task(tid))
        except redis.ResponseError:
            return None
        return h if h and "id" in h else None

    def list_tasks(self) -> list[dict]:
        return self._list(self.keys.pattern("task"))

    def get_task_meta(self, tid: str) -> dict:
        return self.r.hgetall(self.keys.task_meta(tid))

    # ------------------------------------------------------------------ assign
    def assign(self, aid: str, description: str = "", *, tags=(), task_id: str | None = None,
               new_task_id: str | None = None, max_attempts: int | None = None,
               timeout_s: float | None = None, meta: dict | None = None, pipe=None,
               _now: str | None = None) -> str:
        """Assign a task to agent `aid` the way `tt assign` does, in one round trip.

        New task (no `task_id`; its id is `new_task_id` when given): full task hash in state
        `assigned`. Existing task: single-field HSET state/assigned_to/updated_at (started_at
        kept, as tt's Task::assign). With `pipe`, the commands are only queued on it.
        """
        known_tags = tags
        if task_id is not None and pipe is None:
            cur = self.get_task(task_id)
            if cur is None:
                raise LookupError(f"unknown task {task_id!r}")
            known_tags = records.decode_tags(cur.get("tags"))
        tid, cmds = self._assign_cmds(aid, description, tags, task_id or new_task_id,
                                      task_id is not None, max_attempts, timeout_s, meta,
                                      _now or hash_ts(), known_tags)
        if pipe is not None:
            for c in cmds:
                pipe.execute_command(*c)
        else:
            self.send_raw(cmds, transaction=True)   # all or nothing: a refused assign never runs
        return tid

    def assign_cmds(self, aid: str, task_id: str, tags, now: str) -> list[tuple]:
        """assign()'s commands for an existing task whose tags are known, for the caller to
        send inside its own transaction."""
        return self._assign_cmds(aid, "", tags, task_id, True, None, None, None, now, tags)[1]

    def dispatch(self, picks, tags_of, now: str) -> list[bool]:
        """Hand out pending backlog tasks: picks = [(aid, tid)], each taken off the backlog and
        assigned as assign_cmds would, in one call (lua/dispatch.lua; a task no longer in the
        backlog is skipped). `tags_of(tid)`: its tags, for the mission of its event. Returns,
        per pick, whether it was handed out."""
        k = self.keys
        nz = now.replace("+00:00", "Z")
        args = [k.prefix, now, events.TOWN_MAXLEN, events.AGENT_MAXLEN, events.MISSION_MAXLEN]
        for aid, tid in picks:
            mission = records.mission_of(tags_of(tid))
            ev = events.task_assigned(tid, aid, mission=mission, timestamp=nz).data \
                if self.task_events == "lifecycle" else ""
            args += (tid, aid, records.task_assign_json(aid, tid, created_at=nz), ev,
                     mission or "")
        res = self.scripts.dispatch(keys=[k.backlog], args=args)
        return [bool(int(x)) for x in res]

    def _assign_cmds(self, aid, description, tags, tid, existing, max_attempts, timeout_s, meta,
                     now, mission_tags) -> tuple[str, list[tuple]]:
        k = self.keys
        nz = now.replace("+00:00", "Z")
        if not existing:
            tid = tid or new_id()
            hcmd = ("HSET", k.task(tid), "id", tid, "description", description, "state",
                    "assigned", "created_at", now, "updated_at", now, "tags",
                    records.encode_tags(tags), "assigned_to", aid)
        else:
            hcmd = ("HSET", k.task(tid), "state", "assigned", "assigned_to", aid, "updated_at", now)
        cmds = [hcmd]
        if not existing or max_attempts is not None or timeout_s is not None or meta:
            # (the task hash's assigned_to names the agent: for an existing task with nothing
            # else to record, the meta's copy of it is not written)
            cmds.append(("HSET", k.task_meta(tid), "agent", aid,
                         *_meta_fields(max_attempts, timeout_s, meta)))
        cmds.append(("RPUSH", k.inbox(aid), records.task_assign_json(aid, tid, created_at=nz)))
        if self.task_events == "lifecycle":
            cmds += events.commands(k, events.task_assigned(
                tid, aid, mission=records.mission_of(mission_tags), timestamp=nz))
        return tid, cmds

    def assign_many(self, items: list[dict], *, chunk: int = 200, parallel: int = 2) -> list[str]:
        """Bulk assign: each item has `aid` (or `agent`) and `description`, optionally `tags`,
        `task_id`, `max_attempts`, `timeout_s`, `meta`. Sent in chunks of `chunk` tasks, each chunk
        one MULTI/EXEC (a chunk is applied whole or not at all); up to `parallel` chunks in
        flight at once. Existing tasks (`task_id`) are not
        looked up: pass their `tags` for mission events. Returns task ids in item order."""
        chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]

        def one(part: list[dict]) -> list[str]:
            now = hash_ts()
            cmds: list[tuple] = []
            out = []
            for it in part:
                tags = it.get("tags", ())
                tid, c = self._assign_cmds(it.get("aid") or it["agent"], it.get("description", ""),
                                           tags, it.get("task_id"), it.get("task_id") is not None,
                                           it.get("max_attempts"), it.get("timeout_s"),
                                           it.get("meta"), now, tags)
                out.append(tid)
                cmds.extend(c)
            self.send_raw(cmds, transaction=True)
            return out

        if parallel <= 1 or len(chunks) <= 1:
            return [t for part in chunks for t in one(part)]
        from gevent.pool import Pool
        return [t for part in Pool(parallel).imap(one, chunks) for t in part]

    # ------------------------------------------------------------------ state changes
    def start_task(self, tid: str, aid: str | None = None, *, pipe=None) -> None:
        """assigned → running with started_at (single fields)."""
        now = hash_ts()
        fields = {"state": "running", "started_at": now, "updated_at": now}
        if aid:
            fields["assigned_to"] = aid
        (pipe if pipe is not None else self.r).hset(self.keys.task(tid), mapping=fields)

    def reassigned(self, tid: str, pipe) -> None:
        """Queue running → assigned: the task waits in its agent's queue again (a retry, an
        interrupted round)."""
        pipe.hset(self.keys.task(tid), mapping={"state": "assigned", "updated_at": hash_ts()})

    def complete_task(self, tid: str, result: str | None = None) -> bool:
        """Complete a task once. False if it was already terminal; LookupError if it is unknown."""
        return self._finish(tid, "completed", "Completed" if result is None else str(result))

    def fail_task(self, tid: str, error: str) -> bool:
        return self._finish(tid, "failed", str(error))

    def _finish(self, tid: str, state: str, text: str) -> bool:
        k = self.keys
        res = self.scripts.finish_task(keys=[k.task(tid)], args=[k.prefix, state, text, hash_ts(), tid])
        p = self.r.pipeline(transaction=False)
        changed = self.finish_result(p, tid, state, text, res)
        if changed:
            try:
                p.execute()
            except redis.RedisError as e:  # the state change itself is done
                self.log.warning("task event/notify failed", task=tid, error=str(e))
        return changed

    def finish_result(self, p, tid: str, state: str, text: str, res) -> bool:
        """Interpret lua/finish_task.lua's reply; on a change queue the task event and the
        notify on `p`. Returns True if the task changed; LookupError if it does not exist."""
        code = int(res[0])
        if code < 0:
            raise LookupError(f"unknown task {tid!r}")
        if code == 0:
            return False
        aid, tags = res[1] or None, records.decode_tags(res[2])
        mission = records.mission_of(tags)
        if self.task_events == "none":
            pass
        elif state == "completed":
            events.queue(p, self.keys, events.task_completed(tid, aid, mission=mission))
        elif state == "failed":
            events.queue(p, self.keys, events.task_failed(tid, aid, text, mission=mission))
        p.publish(self.keys.notify, self.task_note(tid, state, mission))
        return True

    def cancel_task(self, tid: str, reason: str, *, pipe, mission: str | None = None) -> None:
        """Queue the cancel of a task (lua/cancel_task.lua, once) and its notify on `pipe`. Sent as
        EVAL with the script's text: it runs inside the mission engine's MULTI/EXEC, where a
        NOSCRIPT after a Redis restart would abort the whole transaction."""
        k = self.keys
        pipe.eval(source("cancel_task"), 1, k.task(tid), reason, hash_ts(), k.prefix, tid)
        pipe.publish(k.notify, self.task_note(tid, "cancelled", mission))

    @staticmethod
    def task_note(tid: str, state: str, mission: str | None = None) -> str:
        """The notify message of a task that reached `state`."""
        note = {"task": tid, "state": state}
        if mission:
            note["mission"] = mission
        return records.dumps(note)

    # ------------------------------------------------------------------ backlog
    def backlog_add(self, description: str, *, tags=(), max_attempts: int | None = None,
                    timeout_s: float | None = None, meta: dict | None = None) -> str:
        """A pending task pushed on the backlog (RPUSH), plus a notify so idle agents claim it."""
        k = self.keys
        p = self.r.pipeline(transaction=True)
        tid = self.create_task(description, tags=tags, pipe=p)
        m = _meta_fields(max_attempts, timeout_s, meta)
        if m:
            p.hset(k.task_meta(tid), mapping=dict(zip(m[::2], m[1::2])))
        p.rpush(k.backlog, tid)
        p.publish(k.notify, self.backlog_note(tid))
        p.execute()
        return tid

    def backlog_push(self, tids: list[str], pipe) -> None:
        """Queue task ids (already pending) back on the backlog tail."""
        if tids:
            pipe.rpush(self.keys.backlog, *tids)

    def backlog_push_cmd(self, tids: list[str]) -> tuple:
        """backlog_push's command, for a caller that sends it in its own raw write."""
        return ("RPUSH", self.keys.backlog, *tids)

    def backlog_take_cmd(self, tid: str) -> tuple:
        """The command that takes one task off the backlog (LREM 1: whoever removes it has it)."""
        return ("LREM", self.keys.backlog, 1, tid)

    @staticmethod
    def backlog_note(tid: str, **extra: Any) -> str:
        """The notify message that wakes backlog claims."""
        return records.dumps({"task": tid, "state": "pending", "backlog": True, **extra})

    def claim_call(self, aid: str, words, scan: int) -> tuple[list, list]:
        """KEYS and ARGV of lua/claim_backlog.lua for agent `aid` (run it with the caller's
        Scripts); its reply is (task id or None, entries dead-lettered, finished ones dropped)."""
        k = self.keys
        now = hash_ts()
        nz = now.replace("+00:00", "Z")
        head, tail = records.task_assign_parts(aid, created_at=nz)
        return ([k.backlog, k.deadletter],
                [k.prefix, aid, now, head, tail, scan, nz, records.DEADLETTER_KEPT, *words])

    def backlog_list(self) -> list[str]:
        return self.r.lrange(self.keys.backlog, 0, -1)
