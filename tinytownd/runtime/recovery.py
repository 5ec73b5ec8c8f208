"""The recovery sweeper: agents whose daemon died.

An agent is dead when it is one tinytownd ran (it has a daemon-side info hash), it is in an active
state (working / starting / idle / draining; paused agents wait for `resume`, as in `tt recover`),
nobody holds its lease, and its `last_heartbeat` is older than runtime.stale_after_s. Agents this
daemon is configured to run are left to the agents service (it takes them over itself).

Recovery is one Lua call (lua/recover_agent.lua), compare-and-set on the heartbeat value that was
judged stale and on the lease being absent: in-flight messages go back to the queue heads, then all
queued messages move to a live agent of the same role (tasks re-pointed), or, without one,
task_assign messages put their tasks back on the backlog (pending) and other messages stay. The
agent becomes `stopped`. Nothing is lost and nothing is duplicated; events record what happened.
"""
from __future__ import annotations

import time
from datetime import timedelta

import gevent
import redis

from tinytownd.store import events
from tinytownd.store.wire import hash_ts, parse_ts, utcnow

SWEEPABLE = ("working", "starting", "idle", "draining")
SCAN_COUNT = 1000
READ_CHUNK = 200          # agents per read pipeline (3 commands each)


class Sweeper:
    def __init__(self, rt):
        self.rt = rt

    def run(self) -> None:
        rt = self.rt
        # Let this daemon's own agents start (and go idle) first, so they can receive work.
        while not rt.initial_done and not rt.stopping.is_set():
            rt.stopping.wait(0.1)
        rt.stopping.wait(min(rt.cfg.runtime.sweep_interval_s, 1.0))
        failing = False
        while not rt.stopping.is_set():
            try:
                self.sweep_once()
                failing = False
            except redis.RedisError as e:
                if not failing:         # once per outage, not once per sweep
                    rt.log.warning("sweep failed", error=str(e))
                failing = True
            rt.progress("sweeper")
            rt.stopping.wait(rt.cfg.runtime.sweep_interval_s)

    def sweep_once(self) -> list[dict]:
        """One scan. Only agents this daemon does not run can be dead, so only those are read
        (with 1,000 agents of its own, reading every agent hash in one go was a ~40 ms stretch
        of the loop with no pickup running: the pickup tail). The live agents (destinations)
        are read only when some agent is dead."""
        rt = self.rt
        prefix = rt.keys.agent("")
        ids = [key[len(prefix):] for key in rt.r.scan_iter(match=rt.keys.pattern("agent"),
                                                           count=SCAN_COUNT)]
        others = [aid for aid in ids if aid not in rt.specs]
        if not others:
            return []
        now = utcnow()
        stale_before = now - timedelta(seconds=rt.cfg.runtime.stale_after_s)
        dead = [a for a, managed, leased, hb in self._read(others, now)
                if managed and not leased and a.get("state") in SWEEPABLE and hb < stale_before]
        if not dead:
            return []
        live = [a for a, _managed, leased, hb in self._read(ids, now)
                if leased and a.get("state") in ("idle", "working") and hb >= stale_before]
        dead.sort(key=lambda h: (h.get("created_at", ""), h.get("name", h.get("id"))))
        done = []
        for a in dead:
            r = self.recover(a, live)
            if r:
                done.append(r)
        return done

    def _read(self, aids: list[str], now):
        """(agent hash, has daemon info, leased, heartbeat) of each readable agent, in
        pipelines of READ_CHUNK agents with a yield between them."""
        rt, k = self.rt, self.rt.keys
        for i in range(0, len(aids), READ_CHUNK):
            if i:
                gevent.sleep(0)
            p = rt.r.pipeline(transaction=False)
            for aid in aids[i:i + READ_CHUNK]:
                p.hgetall(k.agent(aid))
                p.exists(k.agent_info(aid))
                p.exists(k.agent_lease(aid))
            res = p.execute(raise_on_error=False)
            for j in range(0, len(res), 3):
                a, managed, leased = res[j:j + 3]
                if not isinstance(a, dict) or "id" not in a:
                    continue          # not an agent hash (a client wrote something else)
                try:
                    hb = parse_ts(a.get("last_heartbeat", ""))
                except ValueError:
                    hb = now   # tt reads an unparsable heartbeat as "now": alive
                yield a, managed is True or managed == 1, leased is True or leased == 1, hb

    def _destination(self, a: dict, live: list[dict]) -> str | None:
        role = a.get("role_id") or "default"
        cands = [b for b in live if (b.get("role_id") or "default") == role and b["id"] != a["id"]]
        if not cands:
            return None
        rt = self.rt
        p = rt.r.pipeline(transaction=False)
        for b in cands:
            p.llen(rt.keys.inbox(b["id"]))
        lens = p.execute()
        return cands[min(range(len(cands)), key=lambda i: lens[i])]["id"]

    def recover(self, a: dict, live: list[dict]) -> dict | None:
        rt = self.rt
        k = rt.keys
        aid = a["id"]
        dest = self._destination(a, live) or ""
        dk = dest or aid
        res = rt.scripts.recover_agent(
            keys=[k.agent(aid), k.inbox(aid), k.urgent(aid), k.inflight(aid),
                  k.inflight_urgent(aid), k.agent_lease(aid), k.backlog, k.inbox(dk),
                  k.urgent(dk)],
            args=[k.prefix, a.get("last_heartbeat", ""), hash_ts(), dest, aid])
        if int(res[0]) != 1:
            return None
        old, moved, backlogged, kept, touched = res[1], int(res[2]), int(res[3]), int(res[4]), \
            res[5]
        tasks = [t for t in (touched or "").split(",") if t]
        where = f"moved {moved} message(s) to {dest}" if dest else \
            f"{backlogged} task(s) back to the backlog, {kept} message(s) kept"
        rt.log.warning("recovered dead agent", agent=a.get("name"), agent_id=aid, moved=moved,
                       backlogged=backlogged, kept=kept, destination=dest or None)
        p = rt.r.pipeline(transaction=False)
        evs = [events.agent_state_changed(aid, old, "stopped",
                                          f"Agent {a.get('name')} recovered: {where}"),
               events.agent_stopped(aid, f"Agent {a.get('name')} recovered (stale heartbeat and "
                                         f"lease): {where}")]
        if dest:
            evs += [events.task_assigned(tid, dest, from_agent=aid,
                                         message=f"Task {tid} reassigned from a dead agent")
                    for tid in tasks]
        rt.town.emit(*evs, pipe=p)
        rt.town.log_activity(aid, "🔄 Recovered (orphaned)", pipe=p)
        if backlogged:
            p.publish(k.notify, rt.town.backlog_note(tasks[0]))
        p.execute()
        return {"agent": aid, "name": a.get("name"), "destination": dest or None,
                "moved": moved, "backlogged": backlogged, "kept": kept, "tasks": tasks,
                "at": time.time()}
