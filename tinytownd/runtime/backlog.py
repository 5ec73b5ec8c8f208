"""The `backlog` service: idle agents claim fitting backlog tasks.

A claim is one Lua call per agent (lua/claim_backlog.lua): the tag rule of store/fit.py decides
what fits, and `LREM backlog 1 tid` is the arbitration point, so no task is claimed twice, by
this daemon or another one. Claims run when a task is put on the backlog (PUBLISH on keys.notify
from Town.backlog_add and batch submissions), when an agent goes idle while the backlog may hold
work, and on a cheap LLEN poll (tt's `backlog add` does not notify).
"""
from __future__ import annotations

import random
import time

import gevent
import gevent.event
import redis

from tinytownd.store import events, fit, quarantine
from tinytownd.store.refusals import transient
from tinytownd.store.records import Poison, parse_note

CLAIM_SCAN = 100            # backlog entries one claim looks at
SLOW_RETRY_S = 5.0          # a non-empty backlog nobody could take is tried again this often


class BacklogClaims:
    def __init__(self, rt):
        self.rt = rt
        self._wake = gevent.event.Event()
        self.wrongtype_races = quarantine.Races()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        rt = self.rt
        k = rt.keys
        ps = rt.block.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(k.notify)
        listener = gevent.spawn(self._listen, ps)
        if not rt.cfg.runtime.backlog_claim:     # notes are still read (bad ones dead-lettered)
            try:
                rt.stopping.wait()
            finally:
                listener.kill(block=False)
                ps.close()
            return
        last_len = -1
        last_try = 0.0
        pause = 0.0
        try:
            while not rt.stopping.is_set():
                self._wake.wait(timeout=max(0.2, rt.cfg.runtime.block_timeout_s, pause))
                woken = self._wake.is_set()
                self._wake.clear()
                try:
                    n = rt.r.llen(k.backlog)
                    now = time.monotonic()
                    if n and (woken or n != last_len or now - last_try > SLOW_RETRY_S):
                        last_try = now
                        self.claim_for_idle()
                        n = rt.r.llen(k.backlog)
                    pause = 0.0
                except redis.RedisError as e:
                    if quarantine.is_wrongtype(e) and self.wrongtype_races.tolerate(
                            self._quarantine()):
                        continue
                    if not transient(e):
                        raise
                    pause = rt.patience.failed(e, pause)
                    n = last_len
                last_len = n
                rt.links.backlog.waiting = bool(n)
                rt.progress("backlog")
        finally:
            listener.kill(block=False)
            try:
                ps.close()
            except Exception:
                pass

    def _listen(self, ps) -> None:
        """The notify channel: a backlog note wakes the claims; a message that is not a note
        (any client can PUBLISH) goes to the dead-letter list."""
        rt = self.rt
        while not rt.stopping.is_set():
            try:
                m = ps.get_message(timeout=1.0)
            except (redis.RedisError, OSError, ValueError):
                rt.stopping.wait(1.0)
                continue
            if not m or m.get("type") != "message":
                continue
            data = m.get("data")
            try:
                note = parse_note(data)
            except Poison as e:
                try:
                    rt.town.deadletter(e.reason, rt.keys.notify, data if isinstance(data, str)
                                       else str(data), reader="runtime")
                except redis.RedisError:
                    pass
                continue
            if note.get("backlog"):
                rt.links.backlog.waiting = True
                self._wake.set()

    def _quarantine(self) -> bool:
        """The backlog (or an idle agent's inbox or a task's meta, which a claim writes) holds
        the wrong type: moved away (store/quarantine.py). False when nothing was left to move:
        an agent reading the backlog may have moved it first."""
        rt, k = self.rt, self.rt.keys
        expected = {k.backlog: "list", k.deadletter: "list"}
        for w in rt.alive():
            expected[k.inbox(w.aid)] = "list"
        moved = quarantine.quarantine(rt.town, expected, log=rt.log)
        if not moved:   # the claimed task's meta: find it among the first backlog entries
            for tid in rt.r.lrange(k.backlog, 0, CLAIM_SCAN - 1):
                moved += quarantine.quarantine(rt.town, {k.task_meta(tid): "hash"}, log=rt.log)
        return bool(moved)

    def claim_for_idle(self) -> int:
        """Give fitting backlog tasks to idle local agents (one each). Returns claims made."""
        rt = self.rt
        k = rt.keys
        idle = [w for w in rt.alive() if w.idle and not w.lost and not w.stop_requested]
        random.shuffle(idle)
        claimed = 0
        for w in idle:
            s = w.settings
            keys, args = rt.town.claim_call(w.aid, fit.agent_words(s.role, s.name, s.tags),
                                            CLAIM_SCAN)
            tid, dead, dropped = rt.scripts.claim_backlog(keys=keys, args=args)
            if int(dead) or int(dropped):
                rt.log.warning("backlog entries removed", dead_lettered=int(dead),
                               finished_dropped=int(dropped))
            if tid:
                claimed += 1
                w.idle = False
                if rt.town.task_events == "lifecycle":
                    rt.town.emit(events.task_assigned(tid, w.aid, message=f"Task {tid} claimed "
                                                                          "from the backlog"))
                rt.log.info("backlog task claimed", agent=s.name, task=tid)
                if not rt.r.llen(k.backlog):
                    break
        return claimed
