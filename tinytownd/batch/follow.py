"""What every batch does on its town: its record, the notify subscription, the state it follows.

`Batch` is the part that task batches (batch/tasks.py, batch/dispatch.py) and mission batches
(batch/mission.py) share: the `batch:<bid>` hash, the SUBSCRIBE on keys.notify that wakes the
follower, the last seen state of each of its tasks (or work items) and their counts, and the agent
names of the summary rows. Each kind says how it starts (`start`), re-reads its states
(`recount`), waits for the end (`follow`), gives back unstarted work on a drain (`withdraw`) and
builds its summary rows (`rows`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import gevent

from tinytownd.store.records import Poison, parse_note
from tinytownd.store.town import Town
from tinytownd.store.wire import TASK_TERMINAL, parse_ts

from .file import BatchFile
from .progress import Counts

RESUBSCRIBE_PAUSE_S = 0.5


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def duration_s(task: dict) -> float | None:
    """Seconds from a task hash's started_at to its completed_at (None unless both parse)."""
    if not (task.get("started_at") and task.get("completed_at")):
        return None
    try:
        return round((parse_ts(task["completed_at"]) - parse_ts(task["started_at"]))
                     .total_seconds(), 3)
    except ValueError:
        return None


class Batch:
    """One batch of one file on one town.

    `redis` is a client with decode_responses=True, `keys` the town's Keys. `ids` maps file ids
    to what the batch follows (task ids; work item ids for a mission), `state` those to their
    last seen state. Greenlet-friendly: every wait is a socket wait (pubsub) or gevent.sleep.
    """

    def __init__(self, file: BatchFile, batch_id: str, redis, keys, *, reporter=None, log=None):
        self.file = file
        self.id = batch_id
        self.redis = redis
        self.keys = keys
        self.reporter = reporter
        self.log = log
        self.town = Town(redis, keys, log=log)
        self.ids: dict[str, str] = {}
        self.state: dict[str, str] = {}
        self.total = 0                        # what the batch runs: tasks, or work items
        self.n_terminal = 0                   # of `state`, how many are terminal
        self.submit_s = 0.0
        self._pubsub = None
        self._agent_names: dict[str, str] = {}

    # --- the batch:<bid> record ---------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.redis.exists(self.keys.batch(self.id)))

    def submitted_before(self) -> bool:
        """Some of the batch is in Redis already (its file-id map exists)."""
        return bool(self.redis.exists(self.keys.batch_ids(self.id)))

    def write_meta(self) -> None:
        now, key = _now(), self.keys.batch(self.id)
        p = self.redis.pipeline(transaction=False)
        p.hsetnx(key, "created_at", now)
        p.hset(key, mapping={
            "state": "running", "file": os.path.abspath(self.file.path), "digest": self.file.digest,
            "total": str(self.file.size()), "kind": self.file.kind, "updated_at": now})
        p.hincrby(key, "runs", 1)
        p.execute()

    def set_state(self, state: str, **extra: Any) -> None:
        self.redis.hset(self.keys.batch(self.id), mapping={
            "state": state, "updated_at": _now(), **{a: str(b) for a, b in extra.items()}})

    # --- what each kind does ------------------------------------------------------------
    def start(self, *, resume: bool) -> tuple[int, int, int]:
        """Submit what is missing and get it going: (new, already there, requeued)."""
        raise NotImplementedError

    def recount(self, *, all_tasks: bool = False) -> None:
        raise NotImplementedError

    def follow(self, *, stop_event=None) -> bool:
        """Wait until everything is terminal (True) or `stop_event` is set (False)."""
        raise NotImplementedError

    def withdraw(self) -> int:
        """A drain of a submitted batch: take its unstarted work back; how many."""
        raise NotImplementedError

    def rows(self) -> list[dict]:
        """The summary rows, one per file entry, in file order."""
        raise NotImplementedError

    def _apply_notes(self, timeout: float) -> int:
        """Apply the notify messages that arrive within `timeout`; how many mattered."""
        raise NotImplementedError

    def stop_dispatching(self) -> None:
        """A drain began: hand out no more work (only a batch that dispatches has any)."""

    # --- notifications ------------------------------------------------------------------
    def subscribe(self) -> None:
        """SUBSCRIBE before submitting, so no terminal transition is missed."""
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.keys.notify)

    def _notes(self, timeout: float, done=lambda: False) -> Iterator[dict]:
        """Notify messages (parsed JSON objects) arriving within `timeout`, until `done()`.

        A lost subscription is logged and renewed and ends the wait: the periodic re-count
        covers whatever was missed. Without a subscription this just sleeps."""
        ps = self._pubsub
        if ps is None:
            gevent.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        while (wait := deadline - time.monotonic()) > 0 and not done():
            try:
                msg = ps.get_message(timeout=wait)
            except Exception as e:  # connection lost
                if self.log:
                    self.log.warning("batch notify subscription lost", error=str(e))
                self._resubscribe()
                return
            if msg is None:
                continue
            try:
                yield parse_note(msg["data"])
            except Poison:        # not a note (the daemon's listener dead-letters it)
                continue

    def _resubscribe(self) -> None:
        self.close()
        try:
            self.subscribe()
        except Exception:
            gevent.sleep(RESUBSCRIBE_PAUSE_S)

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
            self._pubsub = None

    # --- states and counts --------------------------------------------------------------
    def _set(self, tid: str, st: str) -> None:
        old = self.state.get(tid)
        if old == st:
            return
        self.state[tid] = st
        self.n_terminal += (st in TASK_TERMINAL) - (old in TASK_TERMINAL)
        self._changed(tid, old, st)

    def _changed(self, tid: str, old: str | None, st: str) -> None:
        """Hook: something of the batch changed state (the dispatcher refills inboxes)."""

    def counts(self) -> Counts:
        c = Counts(total=self.total)
        for tid in self.ids.values():
            st = self.state.get(tid, "pending")
            if st == "completed":
                c.completed += 1
            elif st in ("failed", "cancelled"):
                c.failed += 1
            elif st == "running":
                c.running += 1
            else:
                c.queued += 1
        c.queued += max(0, self.total - len(self.ids))
        return c

    def catch_up(self, timeout: float) -> Counts:
        """Apply what arrives within `timeout`, re-count, report: the counts now."""
        self._apply_notes(timeout)
        self.recount()
        c = self.counts()
        if self.reporter is not None:
            self.reporter.update(c)
        return c

    # --- summary ------------------------------------------------------------------------
    def _agent_name(self, aid: str | None) -> str | None:
        if not aid:
            return None
        if aid not in self._agent_names:
            self._agent_names[aid] = self.redis.hget(self.keys.agent(aid), "name") or aid
        return self._agent_names[aid]
