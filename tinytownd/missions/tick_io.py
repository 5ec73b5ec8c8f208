"""The I/O of one mission tick: read its input, run the pure scheduler, write its output, all in
one fenced transaction.

WATCH the tick's keys (MissionStore.tick_keys), check that the lease still holds this engine's
token (fencing), read the snapshot, the bound tasks and the agents, run `run_tick`, and queue
every write (records, new tasks with their task_assign messages, cancels, bookkeeping, log
lines, the help query) in ONE MULTI/EXEC. A concurrent write to the mission (an operator
stop/pause, tt) aborts the EXEC and the tick is computed again on fresh data; a lock holding
another token means the lease is lost, and nothing is written.
"""
from __future__ import annotations

import time
from typing import Callable

import redis

from tinytownd import logs
from tinytownd.store import durability
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town
from tinytownd.store.wire import utcnow

from .scheduler import run_tick
from .storage import MissionStore
from .tick import SchedConfig, TickInput, TickOutput

WRITTEN, LEASE_LOST, DELETED = "written", "lease lost", "mission record deleted"
MAX_TX_RETRIES = 8
AGENT_SCAN_S = 5.0
AGENT_FIELDS = ("id", "name", "nickname", "role_id", "state", "last_active_at")


class AgentSnapshot:
    """The agent records a tick sees. The set of agent keys comes from a SCAN at most every
    AGENT_SCAN_S (plus tinytownd's name registry every time), so a tick costs one pipelined HMGET
    round trip instead of a scan of the whole keyspace."""

    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys
        self._ids: set[str] = set()
        self._scan_at = -1e9

    def _read(self, ids) -> list[dict]:
        p = self.r.pipeline(transaction=False)
        for aid in ids:
            p.hmget(self.keys.agent(aid), AGENT_FIELDS)
        out = []
        for vals in p.execute(raise_on_error=False):
            if isinstance(vals, list) and vals[0]:
                out.append({k: v for k, v in zip(AGENT_FIELDS, vals) if v is not None})
        return out

    def read(self) -> list[dict]:
        now = time.monotonic()
        if now - self._scan_at >= AGENT_SCAN_S:
            pre = len(self.keys.agent(""))
            self._ids = {key[pre:] for key in
                         self.r.scan_iter(match=self.keys.pattern("agent"), count=1000)}
            self._scan_at = now
        return self._read(sorted(self._ids | set(self.r.hvals(self.keys.agent_names))))

    def add_assignees(self, agents: list[dict], tasks: dict[str, dict]) -> None:
        """Append the assignees of `tasks` registered since the last scan (e.g. by tt)."""
        known = {a["id"] for a in agents}
        unknown = sorted({t["assigned_to"] for t in tasks.values()
                          if t.get("assigned_to") and t["assigned_to"] not in known})
        if unknown:
            found = self._read(unknown)
            agents.extend(found)
            self._ids.update(a["id"] for a in found)


class TickIO:
    """Reads and writes the ticks of the missions one engine holds. It keeps, per mission, the
    parsed work items (re-parsed only when their JSON changed) and their topological depth."""

    def __init__(self, r: redis.Redis, keys: Keys, store: MissionStore, town: Town, token: str,
                 stats: dict):
        self.r = r
        self.keys = keys
        self.store = store
        self.town = town
        self.token = token
        self.stats = stats                              # the engine's counters
        self.log = logs.get_logger("missions", town=keys.town)
        self.agents = AgentSnapshot(r, keys)
        self.item_cache: dict[str, dict] = {}           # mid -> wid -> (raw json, WorkItem)
        self.depth: dict[str, dict] = {}                # mid -> topo depth of its items

    def forget(self, mid: str) -> None:
        self.item_cache.pop(mid, None)
        self.depth.pop(mid, None)

    def run(self, mid: str, watch_results: dict, cfg: SchedConfig, *, lock,
            busy: dict[str, set[str]],
            after: Callable[[str, TickInput, TickOutput, float], None]) -> str:
        """One fenced tick. `busy` maps each mission to the agents of its live tasks (so an
        agent is not offered to two missions); it is read, and `after(mid, inp, out, started)`
        called once the writes are in, while `lock` is held. Returns WRITTEN, LEASE_LOST or
        DELETED."""
        for _ in range(MAX_TX_RETRIES):
            # with redis.wait_replicas: WAIT after the EXEC (it creates tasks and their messages)
            pipe = durability.wrap(getattr(self.town, "durability", None),
                                   self.r.pipeline(transaction=True))
            with pipe as p:
                try:
                    p.watch(*self.store.tick_keys(mid))
                    if self.store.lock_owner(mid, client=p) != self.token:
                        return LEASE_LOST
                    with lock:
                        started = time.perf_counter()
                        step = self.compute(mid, watch_results, cfg, busy)
                        if step is None:
                            p.unwatch()
                            return DELETED
                        inp, out = step
                        p.multi()
                        written = self.queue(p, mid, inp, out)
                        p.execute()
                        cache = self.item_cache.setdefault(mid, {})
                        for wid, raw in written.items():
                            cache[wid] = (raw, inp.items[wid])
                        if inp.depth is not None:
                            self.depth[mid] = inp.depth
                        after(mid, inp, out, started)
                    return WRITTEN
                except redis.WatchError:
                    self.stats["tx_conflicts"] += 1
                    self.item_cache.pop(mid, None)   # records were mutated in memory
                    continue
                except BaseException:
                    self.item_cache.pop(mid, None)
                    raise
        raise RuntimeError(f"gave up after {MAX_TX_RETRIES} conflicting writes")

    def compute(self, mid: str, watch_results: dict, cfg: SchedConfig,
                busy: dict[str, set[str]]) -> tuple[TickInput, TickOutput] | None:
        """Read the tick's input and run the scheduler; None when the mission is gone."""
        snap = self.store.load(mid, cache=self.item_cache.setdefault(mid, {}))
        if snap.mission is None:
            return None
        for key, f, _raw, why in snap.skipped:
            self.log.warning("unreadable mission record dead-lettered", key=key, field=f,
                             reason=why)
        tasks = self.store.load_tasks(snap.task_ids)
        agents = self.agents.read()
        self.agents.add_assignees(agents, tasks)
        busy_elsewhere = set()
        for other, s in busy.items():
            if other != mid:
                busy_elsewhere |= s
        inp = TickInput(mission=snap.mission, items=snap.items, watches=snap.watches,
                        cmd_watches=snap.cmd_watches,
                        controls=[c for c in snap.controls if c.processed_at is None],
                        tasks=tasks, agents=agents, meta=snap.meta, now=utcnow(),
                        watch_results=watch_results, busy_agents=busy_elsewhere, cfg=cfg,
                        depth=self.depth.get(mid), skipped=snap.skipped)
        out = run_tick(inp)
        out.tasks_processed |= snap.task_ids - set(tasks)   # deleted task hashes leave the index
        return inp, out

    def queue(self, p, mid: str, inp: TickInput, out: TickOutput) -> dict[str, str]:
        """Queue the tick's writes on `p` (in MULTI); returns wid -> JSON of the items written."""
        store = self.store
        for key, f, raw, why in inp.skipped:
            store.q_bury(p, key, f, raw, why)
        written = {wid: store.q_item(p, inp.items[wid]) for wid in out.items_changed}
        for wid in out.watches_changed:
            store.q_watch(p, inp.watches[wid])
        for wid in out.cmd_watches_changed:
            store.q_cmd_watch(p, inp.cmd_watches[wid])
        for c in out.controls_processed:
            store.q_control(p, c)
        for tid, reason in out.cancel_tasks:
            store.q_cancel(p, tid, reason, mid)
        store.q_unbind_tasks(p, mid, out.tasks_processed)
        for nt in out.new_tasks:
            self.town.assign(nt.agent, nt.description, tags=nt.tags, new_task_id=nt.task_id,
                             meta={"mission": mid, "work_item": nt.work_item_id}, pipe=p)
            store.q_bind_tasks(p, mid, [nt.task_id])
        store.q_meta(p, mid, out.meta_set, out.meta_del)
        for to, mtype, fields in out.messages:
            self.town.send(to, mtype, pipe=p, **fields)
        if out.help_question:
            store.q_help(p, out.help_question)
        for line in out.log:
            store.q_log(p, mid, line, inp.now)
        store.q_mission(p, out.mission)
        if out.completed:
            store.q_active(p, mid, False)
        return written
