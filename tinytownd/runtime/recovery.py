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

import redis

from tinytownd.store import events
from tinytownd.store.wire import hash_ts, parse_ts, utcnow

SWEEPABLE = ("working", "starting", "idle", "draining")


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
        rt = self.rt
        k = rt.keys
        agents = rt.town.list_agents()
        if not agents:
            return []
        p = rt.r.pipeline(transaction=False)
        for a in agents:
            p.exists(k.agent_info(a["id"]))
            p.exists(k.agent_lease(a["id"]))
        flags = p.execute()
        now = utcnow()
        stale_before = now - timedelta(seconds=rt.cfg.runtime.stale_after_s)
        live, dead = [], []
        for i, a in enumerate(agents):
            managed, leased = flags[2 * i], flags[2 * i + 1]
            try:
                hb = parse_ts(a.get("last_heartbeat", ""))
            except ValueError:
                hb = now   # tt reads an unparsable heartbeat as "now": alive
            if leased and a.get("state") in ("idle", "working") and hb >= stale_before:
                live.append(a)
            if a["id"] in rt.specs or not managed or leased:
                continue
            if a.get("state") in SWEEPABLE and hb < stale_before:
                dead.append(a)
        done = []
        for a in dead:
            r = self.recover(a, live)
            if r:
                done.append(r)
        return done

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
