"""The embedded task batch's dispatcher: the batch hands its tasks to the agents itself.

In an embedded task batch the runtime's backlog claiming is off (batch/agents.py
`embedded_config`); instead every agent's inbox is kept PREFETCH deep with `Town.assign_cmds`
(one running + one waiting), so an agent that finishes a round takes its next task at once,
without the claim hop through the backlog service. Which agent may take which task is the tag rule
of store/fit.py. Each hand-out pass is one Lua call (lua/dispatch.lua: the backlog removal + the
assignment of every pick; a task no longer in the backlog is not handed out), so a task is always
either queued in the backlog or assigned in an inbox; after a
crash the agents' in-flight and inbox messages are redelivered by the runtime, and
`requeue_lost` puts a pending task that is in no queue back in the backlog.
"""
from __future__ import annotations

import time

import gevent

from tinytownd.store import fit
from tinytownd.store.wire import TASK_TERMINAL, hash_ts

from .tasks import TaskBatch

PREFETCH = 2                # tasks kept in each agent's inbox (running + waiting)
FULL_RECOUNT_EVERY = 10     # every Nth re-count reads every unfinished task, not just those out
FIT_SCAN = 500              # queued tasks one pick looks at for one that fits the agent
AGENTS_TIMEOUT_S = 30.0


class DispatchedBatch(TaskBatch):
    """A task batch that is its town's only dispatcher (see the module doc)."""

    def __init__(self, *a, roster=(), **kw):
        super().__init__(*a, **kw)
        self.roster = list(roster)                    # (agent name, fit words) of its agents
        self.agent_words: dict[str, set] = {}         # aid -> fit words
        self.handed: dict[str, set] = {}              # aid -> tids handed to it, not terminal
        self.holder: dict[str, str] = {}              # tid -> the aid it was handed to
        self.queue: list[str] = []                    # pending tids, in backlog order
        self.task_tags: dict[str, tuple] = {}         # tid -> its tags plus role:<role>
        self.dispatching = False
        self._handed_back: list[str] = []             # tids recovery put back on the backlog
        self._handed_at: dict[str, float] = {}        # tid -> when it was handed out (monotonic)
        self._read_at = 0.0                           # when the states being applied were read
        self._refill = None                           # the pending _dispatch_soon greenlet
        self._recounts = 0
        self._spec_by_id = None                       # file id -> TaskSpec
        self.blocked_aids: set = set()                # agents of a paused CLI (batch/guard.py)
        self.gate = None                              # () -> False: hand out nothing (budget)

    def start(self, *, resume: bool) -> tuple[int, int, int]:
        if not resume and not self.submitted_before():
            # a new batch (nothing of it in Redis): dispatch from the first chunk on
            self.wait_agents()
            self.start_dispatch(fresh=True)
            new, old = self.submit(on_chunk=self.feed)
            return new, old, 0
        new, old, lost = super().start(resume=resume)
        self.wait_agents()
        self.start_dispatch()
        return new, old, lost

    def recount(self, *, all_tasks: bool = False) -> None:
        """Re-read states. Mostly just the tasks handed out (what rounds and recovery change);
        every FULL_RECOUNT_EVERY-th time every unfinished one (the queued tasks only change if
        someone outside the batch touches them)."""
        self._read_at = time.monotonic()
        self._recounts += 1
        if all_tasks or self._recounts % FULL_RECOUNT_EVERY == 0:
            super().recount(all_tasks=all_tasks)
        else:
            for tid, st in self._states(list(self.holder)).items():
                self._set(tid, st)
        self._read_at = 0.0

    def wait_agents(self, timeout: float = AGENTS_TIMEOUT_S) -> None:
        """Wait until the roster's agents are registered; learn their ids."""
        names = [n for n, _w in self.roster]
        deadline = time.monotonic() + timeout
        while True:
            aids = self.redis.hmget(self.keys.agent_names, names) if names else []
            if all(aids) or time.monotonic() > deadline:
                break
            gevent.sleep(0.05)
        for (_name, words), aid in zip(self.roster, aids):
            if aid:
                self.agent_words[aid] = set(words)
                self.handed.setdefault(aid, set())
        if not self.agent_words:
            raise RuntimeError(f"no agent of the batch registered within {timeout:.0f}s")

    def start_dispatch(self, *, fresh: bool = False) -> None:
        """Load what the dispatcher needs and hand out the first tasks. `fresh`: every task is
        being submitted by this process (nothing resumed), so all are pending and in the backlog
        in file order, and reading 2 fields of every task back is skipped."""
        self._learn_tags(self.ids.items())
        if fresh:
            self.n_terminal = 0
            self._states_loaded = True
            self.dispatching = True
            self.feed([(t.id, self.ids[t.id]) for t in self.file.tasks if t.id in self.ids])
            return
        mine = set(self.ids.values())
        tids = list(mine)
        p = self.redis.pipeline(transaction=False)
        for tid in tids:
            p.hmget(self.keys.task(tid), "state", "assigned_to")
        res = p.execute()
        in_backlog = [t for t in self.town.backlog_list() if t in mine]
        for tid, (st, aid) in zip(tids, res):
            st = st or "pending"
            self.state[tid] = st
            if st not in TASK_TERMINAL and st != "pending" and aid in self.agent_words:
                self.holder[tid] = aid
                self.handed[aid].add(tid)
        self.n_terminal = sum(1 for t in tids if self.state[t] in TASK_TERMINAL)
        self._states_loaded = True
        seen = set()
        for tid in in_backlog:
            if tid not in seen and self.state.get(tid) == "pending":
                self.queue.append(tid)
                seen.add(tid)
        self.dispatching = True
        self.dispatch()

    def stop_dispatching(self) -> None:
        self.dispatching = False     # inboxes keep what they hold

    def _learn_tags(self, pairs) -> None:
        """The fit tags of (file id, task id) pairs: their tags plus `role:<role>`."""
        if self._spec_by_id is None:
            self._spec_by_id = self.file.by_id()
        for fid, tid in pairs:
            t = self._spec_by_id.get(fid)
            if t is not None:
                self.task_tags[tid] = tuple(fit.role_tags(t.tags, t.role))

    def feed(self, pairs) -> None:
        """Newly submitted (file id, task id) pairs of a fresh dispatch: pending, in the backlog
        in this order. Queued behind what is there, then handed out."""
        self._learn_tags(pairs)
        for _fid, tid in pairs:
            self.state[tid] = "pending"
            self.queue.append(tid)
        self.dispatch()

    def _changed(self, tid: str, old: str | None, st: str) -> None:
        aid = self.holder.get(tid)
        if aid is None:
            return
        if st in TASK_TERMINAL:
            del self.holder[tid]
            self.handed[aid].discard(tid)
            self._dispatch_soon()
        elif st == "pending" and self._handed_at.get(tid, 0.0) < self._read_at:
            # handed back (recovery moved it to the backlog) — a state read *after* we gave it
            # out; a re-count that read `pending` before our dispatch call landed is just stale
            del self.holder[tid]
            self.handed[aid].discard(tid)
            self._handed_back.append(tid)

    def _dispatch_soon(self) -> None:
        """One dispatch for every notification read meanwhile: the refill runs in its own
        greenlet once the follower waits, so the follower never waits on a dispatch call per
        finished task and agents' inboxes do not run dry behind it."""
        if self._refill is not None:
            return

        def refill():
            self._refill = None
            try:
                self.dispatch()
            except Exception as e:   # Redis blip: the next finished task or re-count retries
                if self.log:
                    self.log.warning("batch dispatch failed", error=str(e))
        self._refill = gevent.spawn(refill)

    def _fits(self, tid: str, aid: str) -> bool:
        return fit.task_fits(self.task_tags.get(tid), self.agent_words[aid])

    def _pick(self) -> list[tuple[str, str]]:
        """(aid, tid) hand-outs that top every inbox up to PREFETCH (fair: one each per pass)."""
        picks: list[tuple[str, str]] = []
        for depth in range(1, PREFETCH + 1):
            for aid in self.agent_words:
                if len(self.handed[aid]) >= depth or not self.queue or aid in self.blocked_aids:
                    continue
                idx = next((i for i, tid in enumerate(self.queue[:FIT_SCAN])
                            if self._fits(tid, aid)), None)
                if idx is None:
                    continue
                tid = self.queue.pop(idx)
                self.handed[aid].add(tid)
                self.holder[tid] = aid
                picks.append((aid, tid))
        return picks

    def dispatch(self) -> int:
        """Hand out what fits, in one call; how many tasks went out."""
        if not self.dispatching or (self.gate is not None and not self.gate()):
            return 0
        if self._handed_back:
            back, self._handed_back = self._handed_back, []
            queued = set(self.town.backlog_list())
            p = self.redis.pipeline(transaction=False)
            self.town.backlog_push([t for t in back if t not in queued], p)
            p.execute()
            self.queue.extend(t for t in back if t not in self.queue)
        if not self.queue:
            return 0
        picks = self._pick()
        if not picks:
            return 0
        try:       # one call (lua/dispatch.lua): backlog removal + assignment of every pick
            handed = self.town.dispatch(picks, lambda t: self.task_tags.get(t, ()), hash_ts())
        except Exception as e:   # Redis blip: put them back; the next pass retries
            for aid, tid in reversed(picks):
                self.handed[aid].discard(tid)
                self.holder.pop(tid, None)
                self.queue.insert(0, tid)
            if self.log:
                self.log.warning("batch dispatch failed", error=str(e))
            return 0
        handed_at = time.monotonic()
        for (aid, tid), ok in zip(picks, handed):
            if ok:
                self.state[tid] = "assigned"
                self._handed_at[tid] = handed_at
            else:       # someone else took it off the backlog: theirs now (re-counts follow it)
                self.handed[aid].discard(tid)
                self.holder.pop(tid, None)
        return sum(handed)
