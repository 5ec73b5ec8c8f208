"""A mission batch: the file is a mission, started through the missions API (compile + store) and
driven by the daemon's MissionEngine; progress and the summary are the mission's work items.

It is finished when the mission is `completed`/`failed`, or when it is stuck: nothing ready,
assigned or running for STUCK_S (an item used up its retries and is blocked, waiting for help).
Then what did not run counts as failed.
"""
from __future__ import annotations

import time
from typing import Any

import yaml

from tinytownd.missions import compile as mc
from tinytownd.missions.storage import MissionStore
from tinytownd.store import records
from tinytownd.store.wire import TASK_TERMINAL

from tinytownd.workspaces.records import summary_fields

from .file import BatchFile, BatchFileError
from .follow import Batch, duration_s
from .progress import Counts

STUCK_S = 3.0
POLL_S = 0.5                 # the longest wait for a notification between mission re-reads
WORK_ITEM_TAG = "work-item:"
ITEM_STATE = {"done": "completed", "blocked": "failed", "running": "running",
              "assigned": "running", "ready": "pending", "pending": "pending"}


def compile_mission(bf: BatchFile, roles: set[str] | None):
    """The missions compiler's result for the file (graph, ids, policy checked)."""
    try:
        return mc.compile_text(yaml.safe_dump(bf.mission, sort_keys=False), bf.path, roles=roles)
    except mc.MissionFileError as e:
        raise BatchFileError(bf.path, "work_items", "; ".join(e.problems)) from None


def check_mission(bf: BatchFile) -> None:
    """Validate a mission file up front, before anything starts."""
    compile_mission(bf, None)


class MissionBatch(Batch):
    """The work items of one mission; `ids` maps file ids to work item ids."""

    def __init__(self, *a, roles=(), **kw):
        """`roles`: those of the town's agents (the compiler knows the usual ones too)."""
        super().__init__(*a, **kw)
        self.roles = mc.known_roles(roles or ())
        self.store = MissionStore(self.redis, self.keys)
        self.mission_id: str | None = None
        self.mission_state = "planning"
        self.items: dict[str, Any] = {}          # wid -> WorkItem
        self._mission_meta: dict = {}
        self._task_ids: set = set()              # every task of the mission seen so far
        self._stuck_since: float | None = None

    def start(self, *, resume: bool) -> tuple[int, int, int]:
        new, old = self.submit()
        return new, old, 0

    def submit(self) -> tuple[int, int]:
        """Create the mission, or find the one this batch created before: (new, existing)."""
        t0 = time.monotonic()
        mid = self.redis.hget(self.keys.batch(self.id), "mission")
        if mid and self.store.get_mission(mid) is not None:
            self.mission_id = mid
            self.ids = self.redis.hgetall(self.keys.batch_ids(self.id)) or {}
            self.submit_s = time.monotonic() - t0
            self.total = len(self.ids)
            return 0, self.total
        c = compile_mission(self.file, self.roles)
        p = self.redis.pipeline(transaction=True)
        p.hset(self.keys.batch(self.id), "mission", c.mission.id)
        p.delete(self.keys.batch_ids(self.id))
        p.hset(self.keys.batch_ids(self.id), mapping=c.file_ids)
        p.execute()
        self.store.create(c.mission, c.items, c.cmd_watches, c.meta, c.log)
        self.mission_id = c.mission.id
        self.ids = dict(c.file_ids)
        self.total = len(self.ids)
        self.submit_s = time.monotonic() - t0
        return self.total, 0

    def withdraw(self) -> int:
        """Nothing of a mission waits in the backlog: the engine assigns its items."""
        self.recount()
        return 0

    def recount(self, *, all_tasks: bool = False) -> None:
        snap = self.store.load(self.mission_id)
        if snap.mission is not None:
            self.mission_state = snap.mission.state
        self.items = dict(snap.items)
        self._mission_meta = snap.meta or {}
        self._task_ids |= set(snap.task_ids or ())
        for wid in self.ids.values():
            it = self.items.get(wid)
            self._set(wid, ITEM_STATE.get(it.status if it else "pending", "pending"))

    def _apply_notes(self, timeout: float) -> int:
        """Collect the mission's task ids from terminal notifications (the engine drops processed
        tasks from the mission's task set, and the summary wants every attempt)."""
        n = 0
        for note in self._notes(timeout):
            if note.get("mission") == self.mission_id and note.get("task"):
                self._task_ids.add(note["task"])
                n += 1
                if note.get("state") in TASK_TERMINAL:
                    return n     # re-read the mission at once
        return n

    def counts(self) -> Counts:
        c = super().counts()
        if self.mission_state in ("completed", "failed"):
            return c
        if c.running == 0 and not any(getattr(it, "status", "") in ("ready", "assigned",
                                                                    "running")
                                      for it in self.items.values()) and c.done < c.total:
            now = time.monotonic()
            self._stuck_since = self._stuck_since or now
            if now - self._stuck_since >= STUCK_S:
                c.queued = 0       # stuck: what did not run counts as failed
                c.failed = c.total - c.completed
        else:
            self._stuck_since = None
        return c

    def follow(self, *, stop_event=None) -> bool:
        while True:
            self.recount()
            c = self.counts()
            if self.reporter is not None:
                self.reporter.update(c)
            if c.finished:
                return True
            if stop_event is not None and stop_event.is_set():
                return False
            self._apply_notes(POLL_S)

    # --- summary ------------------------------------------------------------------------
    def _latest_tasks(self) -> tuple[dict[str, dict], dict[str, int]]:
        """Per work item: its latest task hash, and how many tasks it had."""
        latest: dict[str, dict] = {}
        n_tasks: dict[str, int] = {}
        if not self._task_ids:
            return latest, n_tasks
        order = list(self._task_ids)
        p = self.redis.pipeline(transaction=False)
        for tid in order:
            p.hgetall(self.keys.task(tid))
        for h in p.execute():
            wid = next((t[len(WORK_ITEM_TAG):] for t in records.decode_tags(h.get("tags"))
                        if t.startswith(WORK_ITEM_TAG)), None)
            if not wid:
                continue
            n_tasks[wid] = n_tasks.get(wid, 0) + 1
            if wid not in latest or h.get("created_at", "") >= latest[wid].get("created_at", ""):
                latest[wid] = h
        return latest, n_tasks

    def rows(self) -> list[dict]:
        self.recount()
        latest, n_tasks = self._latest_tasks()
        p = self.redis.pipeline(transaction=False)
        wids = [w for w in self.ids.values() if latest.get(w, {}).get("id")]
        for wid in wids:
            p.hgetall(self.keys.task_meta(latest[wid]["id"]))
        metas = dict(zip(wids, p.execute())) if wids else {}
        out = []
        stuck = self.counts().queued == 0
        for fid, wid in self.ids.items():
            it = self.items.get(wid)
            status = it.status if it else "pending"
            st = ITEM_STATE.get(status, "pending")
            if stuck and st in ("pending", "assigned"):
                st = "failed"
            h = latest.get(wid, {})
            try:
                attempts = int(self._mission_meta.get(f"attempts:{wid}") or 0)
            except ValueError:
                attempts = 0
            attempts = max(attempts, n_tasks.get(wid, 0))
            out.append({"id": fid, "task_id": h.get("id"), "work_item": wid, "state": st,
                        "item_status": status, "attempts": attempts,
                        "agent": self._agent_name(getattr(it, "assigned_to", None)
                                                  or h.get("assigned_to")),
                        "duration_s": duration_s(h), "result": h.get("result"),
                        "started_at": h.get("started_at"), "completed_at": h.get("completed_at"),
                        **summary_fields(metas.get(wid) or {})})
        return out
