"""A task batch: submit the file's tasks to a town's backlog, follow them, summarise them.

Submission is idempotent: `batch:<bid>:ids` maps every file id to its task uuid, written in the
same MULTI/EXEC as the task hash and the backlog entry, so a resume (`--resume ID`) after a crash
submits exactly the tasks that are missing and never a completed one twice. Completion is
event-driven (SUBSCRIBE keys.notify) with a periodic re-count of the unfinished tasks, so it never
hangs on a lost notification. Without a dispatcher (batch/dispatch.py) the town's agents claim the
tasks from the backlog themselves.
"""
from __future__ import annotations

import time

import gevent

from tinytownd.runtime.agent_cli.usage import USAGE_FIELDS, usage_view
from tinytownd.store import fit
from tinytownd.store.wire import TASK_TERMINAL

from tinytownd.workspaces.records import summary_fields

from .follow import Batch, duration_s

SUBMIT_CHUNK = 250          # tasks per MULTI/EXEC
READ_CHUNK = 1000           # task states per pipelined read
ROWS_CHUNK = 500            # summary rows per pipelined read
WITHDRAW_CHUNK = 500        # backlog removals per pipeline
RECOUNT_INTERVAL_S = 1.0
NOTIFY_POLL_S = 0.25
NO_KEY = "tt:-"             # read in place of a task that was never submitted (an empty hash)


class TaskBatch(Batch):
    """The tasks of a task file on one town: submission, progress following and summary rows."""

    def __init__(self, *a, link_meta: bool = True, **kw):
        """`link_meta`: write batch/batch_task into each task's daemon meta: a worktree's
        branch name reads them (agents.uses_workspaces), and so does add_usage.lua, which sums
        the rounds' usage into batch:<bid> (the cost budget, --max-cost-usd, reads that sum).
        Without it (an embedded batch with neither) the link is only batch:<bid>:ids, a task
        without limits or a role gets no meta at all, and the summary's usage totals come from
        the task rows as always."""
        super().__init__(*a, **kw)
        self.link_meta = link_meta
        self.total = len(self.file.tasks)
        self._states_loaded = False           # self.state holds every task's state already

    # --- submission ---------------------------------------------------------------------
    def start(self, *, resume: bool) -> tuple[int, int, int]:
        new, old = self.submit()
        return new, old, self.requeue_lost() if resume else 0

    def submit(self, on_chunk=None) -> tuple[int, int]:
        """Submit every file task not yet submitted; return (new, already there).

        Each chunk is one MULTI/EXEC: the task hashes + daemon task meta (only for tasks with
        something to record: the batch link (link_meta), limits, a role) + one RPUSH of the backlog entries + one HSET of the
        `batch:<bid>:ids` mappings + one RPUSH of the `batch:<bid>:tasks` list, so after a crash
        a file id is either fully submitted or not at all. `on_chunk([(file id, task id), ...])` is called
        after each chunk lands (the dispatcher starts handing out the first tasks while the
        rest are still being submitted).
        """
        t0 = time.monotonic()
        known = {t.id for t in self.file.tasks}
        # (ids of tasks no longer in the file are left alone: the batch follows the file)
        self.ids = {fid: tid for fid, tid in
                    (self.redis.hgetall(self.keys.batch_ids(self.id)) or {}).items()
                    if fid in known}
        # a mapping whose task hash vanished (deleted by hand) counts as not submitted
        if self.ids:
            fids = list(self.ids)
            p = self.redis.pipeline(transaction=False)
            for fid in fids:
                p.exists(self.keys.task(self.ids[fid]))
            for fid, ok in zip(fids, p.execute()):
                if not ok:
                    del self.ids[fid]
        todo = [t for t in self.file.tasks if t.id not in self.ids]
        for i in range(0, len(todo), SUBMIT_CHUNK):
            cmds, new_ids = self._submit_cmds(todo[i:i + SUBMIT_CHUNK])
            self.town.send_raw(cmds, transaction=True)     # one MULTI/EXEC per chunk, one write
            self.ids.update(new_ids)
            # one wake-up per chunk for idle agents (Town.backlog_add sends one per task)
            last = next(reversed(new_ids.values()))
            self.redis.publish(self.keys.notify, self.town.backlog_note(last, batch=self.id))
            if on_chunk is not None:
                on_chunk(list(new_ids.items()))
        self.submit_s = time.monotonic() - t0
        return len(todo), len(self.file.tasks) - len(todo)

    def _submit_cmds(self, specs) -> tuple[list[tuple], dict[str, str]]:
        """The commands that submit `specs`, and their file id → task id map."""
        k, town = self.keys, self.town
        cmds: list[tuple] = []
        new_ids: dict[str, str] = {}
        for t in specs:
            # A task fits an agent when it has no tags or one of its tags is one of the agent's
            # words (store/fit.py), so the batch link lives in batch:<bid>:ids,
            # batch:<bid>:tasks and (link_meta) the task meta, never in the tags.
            tid, hset = town.create_task_cmd(t.description, tags=fit.role_tags(t.tags, t.role))
            cmds.append(hset)
            meta = ["batch", self.id, "batch_task", t.id] if self.link_meta else []
            if t.max_attempts is not None:
                meta += ("max_attempts", str(t.max_attempts))
            if t.timeout_s is not None:
                meta += ("timeout_s", repr(float(t.timeout_s)))
            if t.role:
                meta += ("role", t.role)
            if meta:
                cmds.append(("HSET", k.task_meta(tid), *meta))
            new_ids[t.id] = tid
        tids = list(new_ids.values())
        ids = [x for fid, tid in new_ids.items() for x in (fid, tid)]
        cmds += (town.backlog_push_cmd(tids), ("HSET", k.batch_ids(self.id), *ids),
                 ("RPUSH", k.batch_tasks(self.id), *tids))
        return cmds, new_ids

    def requeue_lost(self) -> int:
        """Resume: a `pending` task of this batch that is in no backlog gets pushed again."""
        tids = [self.ids[t.id] for t in self.file.tasks if t.id in self.ids]
        pending = [tid for tid, st in self._states(tids).items() if st == "pending"]
        if not pending:
            return 0
        queued = set(self.town.backlog_list())
        lost = [tid for tid in pending if tid not in queued]
        if lost:
            p = self.redis.pipeline(transaction=True)
            self.town.backlog_push(lost, p)
            p.execute()
            self.redis.publish(self.keys.notify, self.town.backlog_note(lost[-1], batch=self.id))
        return len(lost)

    def withdraw(self) -> int:
        """Take this batch's unstarted tasks out of the backlog; they stay `pending` for
        --resume."""
        self.recount()
        pending = [tid for tid, st in self.state.items() if st == "pending"]
        n = 0
        for i in range(0, len(pending), WITHDRAW_CHUNK):
            p = self.redis.pipeline(transaction=False)
            for tid in pending[i:i + WITHDRAW_CHUNK]:
                p.execute_command(*self.town.backlog_take_cmd(tid))
            n += sum(int(x or 0) for x in p.execute())
        return n

    # --- following ----------------------------------------------------------------------
    def _states(self, tids) -> dict[str, str]:
        out: dict[str, str] = {}
        tids = list(tids)
        for i in range(0, len(tids), READ_CHUNK):
            p = self.redis.pipeline(transaction=False)
            chunk = tids[i:i + READ_CHUNK]
            for tid in chunk:
                p.hget(self.keys.task(tid), "state")
            for tid, st in zip(chunk, p.execute()):
                out[tid] = st or "pending"
        return out

    def recount(self, *, all_tasks: bool = False) -> None:
        tids = list(self.ids.values()) if all_tasks else \
            [t for t in self.ids.values() if self.state.get(t) not in TASK_TERMINAL]
        for tid, st in self._states(tids).items():
            self._set(tid, st)

    def _apply_notes(self, timeout: float) -> int:
        """Apply terminal transitions from notify messages (waiting up to `timeout`)."""
        n = 0
        for note in self._notes(timeout, done=lambda: self.n_terminal >= len(self.ids)):
            tid, st = note.get("task"), note.get("state")
            if st in TASK_TERMINAL and tid in self.state:
                self._set(tid, st)
                n += 1
        return n

    def follow(self, *, stop_event=None) -> bool:
        if not self._states_loaded:
            self.recount(all_tasks=True)
        last_recount = time.monotonic()
        notes = 0
        while True:
            c = self.counts()
            if self.reporter is not None:
                self.reporter.update(c)
            if c.finished:
                # trust but verify: a final re-count of everything before declaring victory
                self.recount(all_tasks=True)
                c = self.counts()
                if c.finished:
                    return True
            if stop_event is not None and stop_event.is_set():
                return False
            notes += self._apply_notes(NOTIFY_POLL_S)
            # The re-count is the safety net (and the running/queued split): every second when
            # notifications are quiet, every 3 s while they flow (less load on a busy run).
            interval = RECOUNT_INTERVAL_S if not notes else 3 * RECOUNT_INTERVAL_S
            if time.monotonic() - last_recount >= interval:
                notes = 0
                try:
                    self.recount()
                except Exception as e:  # Redis blip: report and keep following
                    if self.log:
                        self.log.warning("batch re-count failed", error=str(e))
                    gevent.sleep(0.5)
                last_recount = time.monotonic()

    # --- summary ------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        out = []
        specs = self.file.tasks
        for i in range(0, len(specs), ROWS_CHUNK):
            chunk = specs[i:i + ROWS_CHUNK]
            p = self.redis.pipeline(transaction=False)
            for t in chunk:
                tid = self.ids.get(t.id)
                p.hgetall(self.keys.task(tid) if tid else NO_KEY)
                p.hgetall(self.keys.task_meta(tid) if tid else NO_KEY)
            res = p.execute()
            for j, t in enumerate(chunk):
                out.append(self._row(t.id, res[2 * j] or {}, res[2 * j + 1] or {}))
        return out

    def _row(self, fid: str, task: dict, meta: dict) -> dict:
        try:
            attempts = int(meta.get("attempts") or 0)
        except ValueError:
            attempts = 0
        st = task.get("state") or ("pending" if task else "unsubmitted")
        if st in ("completed", "failed") and attempts == 0:
            attempts = 1
        return {"id": fid, "task_id": self.ids.get(fid), "state": st, "attempts": attempts,
                "agent": self._agent_name(task.get("assigned_to") or meta.get("agent")),
                "duration_s": duration_s(task), "result": task.get("result"),
                "started_at": task.get("started_at"), "completed_at": task.get("completed_at"),
                **summary_fields(meta),
                **({"error": meta["last_error"]} if meta.get("last_error") and
                   st != "completed" else {}),
                **usage_view({f: meta.get(f) for f in USAGE_FIELDS}),
                **_failure_classes(meta)}


def _failure_classes(meta: dict) -> dict:
    """{"failures": [class of each failed round, oldest first]} (nothing when none failed)."""
    import json

    try:
        got = json.loads(meta.get("failures") or "[]")
    except ValueError:
        return {}
    classes = [f.get("class") for f in got if isinstance(f, dict)] if isinstance(got, list) else []
    return {"failures": classes} if classes else {}
