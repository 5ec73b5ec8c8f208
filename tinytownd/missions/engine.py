"""MissionEngine: the daemon component that drives missions (issue 4; spec §4, B1–B16, W1–W25).

Services (run by the daemon's supervisor, each returns when ctx.stopping is set):
  missions.leases    every min(1 s, ttl/3): heartbeat this engine in `mission:engines`, refresh
                     held leases (compare-and-EXPIRE; a failed refresh drops the mission at once),
                     release missions that left the active set, acquire active missions up to a
                     fair share (ceil(active / live engines), rendezvous-hash preference), release
                     the excess when another engine joins.
  missions.dispatch  timer heap (watch next_due_at, agent-wait retries, error backoff) + wake set
                     (task notifications, operator commands) + a slow safety sweep
                     (missions.sweep_interval_s); ticks run in a greenlet pool, one at a time
                     per mission, each with `mission` bound in the log context.
  missions.notify    SUBSCRIBE keys.notify: a task reaching a terminal state wakes its mission at
                     once; operator commands publish {"mission": id} to wake or acquire.

A tick: (A) due watches are checked outside any transaction (gh / commands, with timeouts);
(B) WATCH lock + mission + work + watch keys, fencing check `GET lock == token`, read the
snapshot and the bound tasks, run the pure scheduler, and queue every write (records, tasks +
task_assign messages, cancels, meta, log lines, help query) in ONE MULTI/EXEC. A concurrent
write to the mission (operator stop/pause, tt) aborts EXEC and the tick is re-run on fresh data;
a changed lock means the lease is lost and nothing is written.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import time
from datetime import timedelta

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import redis
import structlog

from tinytownd import logs
from tinytownd.store import records
from tinytownd.daemon.component import Component, Context
from tinytownd.config import Config
from tinytownd.store.leases import Leases
from tinytownd.store.scripts import Scripts
from tinytownd.store.wire import TASK_TERMINAL, new_id, utcnow
from tinytownd.missions.scheduler import SchedConfig, TickInput, run_tick
from tinytownd.missions.storage import MissionStore
from tinytownd.missions.watches import GhClient, check_command_watch, check_pr_watches

MAX_TX_RETRIES = 8
AGENT_WAIT_MIN_S = 0.02
AGENT_WAIT_MAX_S = 5.0
AGENT_SCAN_S = 5.0
MIN_RECHECK_S = 1.0


class LeaseState:
    """What the engine remembers about a mission lease it holds."""

    __slots__ = ("mid", "acquired", "refreshed", "lost")

    def __init__(self, mid: str):
        self.mid = mid
        self.acquired = self.refreshed = time.monotonic()
        self.lost = False


def _rendezvous(token: str, mid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{token}|{mid}".encode(), digest_size=8).digest(),
                          "big")


class MissionEngine(Component):
    name = "missions"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.log = logs.get_logger("missions", town=ctx.keys.town)
        self.r = ctx.clients.cmd
        self.k = ctx.keys
        self.store = MissionStore(self.r, self.k)
        town = ctx.extra.get("town")
        if town is None:
            from tinytownd.store.town import Town
            town = Town(self.r, self.k)
        self.town = town
        self.token = new_id()
        cfg = ctx.config.missions
        self.leases = Leases(self.r, self.k.mission_lock, self.token, cfg.lease_ttl_s,
                             Scripts(self.r))
        self.owned: dict[str, LeaseState] = {}
        self.ticking: set[str] = set()
        self.dirty: set[str] = set()
        self.waiting_agent: dict[str, float] = {}      # mid -> current retry delay
        self.busy: dict[str, set[str]] = {}            # mid -> assignees of its live tasks
        self.errors: dict[str, int] = {}
        self.item_cache: dict[str, dict] = {}          # mid -> wid -> (raw json, WorkItem)
        self.depth: dict[str, dict] = {}               # mid -> topo depth of its items
        self.last_tick: dict[str, float] = {}
        self.timers: list[tuple[float, int, str]] = []
        self._seq = 0
        self.wake_set: set[str] = set()
        self.wake_evt = gevent.event.Event()
        self.lease_evt = gevent.event.Event()
        self.pool = gevent.pool.Pool(32)
        self.assign_lock = gevent.lock.Semaphore()     # cross-mission agent accounting
        self.watch_sem = gevent.lock.BoundedSemaphore(4)
        self.draining = False
        self._agent_ids: set[str] = set()
        self._agent_scan_at = -1e9
        self.stats = {"ticks": 0, "assigned": 0, "tx_conflicts": 0, "lease_lost": 0,
                      "errors": 0, "watch_checks": 0, "help_requests": 0}
        self._apply_config(ctx.config)

    # ------------------------------------------------------------------ config
    def _apply_config(self, config: Config) -> None:
        cfg = config.missions
        self.enabled = cfg.enabled
        self.ttl = cfg.lease_ttl_s
        self.leases.ttl_s = cfg.lease_ttl_s
        self.sweep_s = cfg.sweep_interval_s
        self.gh = GhClient(cfg.gh, cfg.gh_timeout_s, cwd=str(config.root))
        self.sched = SchedConfig(tick_interval_s=max(cfg.sweep_interval_s, 1.0),
                                 help_base_s=cfg.conductor_help_backoff_s)

    def reload(self, old: Config, new: Config) -> list[str]:
        self._apply_config(new)
        return []

    def services(self):
        if not self.enabled:
            return {}
        return {"missions.leases": self.lease_loop, "missions.dispatch": self.dispatch_loop,
                "missions.notify": self.notify_loop}

    def status(self) -> dict:
        now = time.monotonic()
        return {"enabled": self.enabled, "engine": self.token, "owned": len(self.owned),
                "missions": {mid: {"last_tick_ago_s": round(now - self.last_tick[mid], 3)
                                   if mid in self.last_tick else None,
                                   "errors": self.errors.get(mid, 0)}
                             for mid in sorted(self.owned)},
                **self.stats}

    def drain(self, deadline: float) -> None:
        self.draining = True
        self.pool.join(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.draining = True
        self.pool.kill(timeout=2)
        for mid in list(self.owned):
            try:
                self.leases.release(mid)
            except redis.RedisError:
                pass
        self.owned.clear()
        try:
            self.r.zrem(self.k.mission_engines, self.token)
        except redis.RedisError:
            pass

    # ------------------------------------------------------------------ waking
    def wake(self, mid: str) -> None:
        self.wake_set.add(mid)
        self.wake_evt.set()

    def timer(self, mid: str, delay_s: float) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (time.monotonic() + max(0.0, delay_s), self._seq, mid))
        self.wake_evt.set()

    def _fence(self, mid: str) -> None:
        """A new holder of the mission's lease bumps its fence counter."""
        try:
            self.r.hincrby(self.k.mission_meta(mid), "fence", 1)
        except redis.RedisError:
            pass

    def drop(self, mid: str, why: str, release: bool = True) -> None:
        st = self.owned.pop(mid, None)
        if st is None:
            return
        st.lost = True
        self.busy.pop(mid, None)
        self.item_cache.pop(mid, None)
        self.depth.pop(mid, None)
        self.waiting_agent.pop(mid, None)
        if release:
            try:
                self.leases.release(mid)
            except redis.RedisError:
                pass
        self.log.info("mission released", mission=mid, reason=why)

    # ------------------------------------------------------------------ lease loop
    def lease_loop(self) -> None:
        backoff = 0.5
        while not self.ctx.stopping.is_set():
            try:
                self.lease_round()
                backoff = 0.5
                self.ctx.progress("missions.leases")
                period = min(1.0, self.ttl / 3)
            except (redis.RedisError, OSError) as e:
                self.log.warning("mission lease round failed; retrying", error=str(e),
                                 retry_in_s=backoff)
                period, backoff = backoff, min(backoff * 2, 30.0)
            self.lease_evt.wait(timeout=period)
            self.lease_evt.clear()

    def lease_round(self) -> None:
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        p = self.r.pipeline(transaction=False)
        p.zadd(self.k.mission_engines, {self.token: now_ms})
        p.zremrangebyscore(self.k.mission_engines, 0, now_ms - int(3 * self.ttl * 1000))
        p.zcard(self.k.mission_engines)
        p.smembers(self.k.missions_active)
        _, _, engines, active = p.execute()
        # refresh / drop what we hold
        for mid, st in list(self.owned.items()):
            if mid not in active and mid not in self.ticking:
                self.drop(mid, "no longer active")
                continue
            if now - st.refreshed >= self.ttl / 3:
                if self.leases.renew(mid):
                    st.refreshed = now
                else:
                    self.stats["lease_lost"] += 1
                    self.log.warning("mission lease lost; stopped writing to it", mission=mid)
                    self.drop(mid, "lease lost", release=False)
        if self.draining:
            return
        quota = math.ceil(len(active) / max(1, engines))
        if len(self.owned) > quota:
            excess = sorted((m for m in self.owned if m not in self.ticking),
                            key=lambda m: _rendezvous(self.token, m))
            for mid in excess[:len(self.owned) - quota]:
                self.drop(mid, "rebalancing to another engine")
        if len(self.owned) >= quota:
            return
        got = []
        for mid in sorted(active - set(self.owned), key=lambda m: -_rendezvous(self.token, m)):
            if len(self.owned) >= quota:
                break
            if self.leases.acquire(mid):
                self._fence(mid)
                self.owned[mid] = LeaseState(mid)
                self.log.info("mission acquired", mission=mid)
                got.append(mid)
        if got:
            try:
                self.import_bound_tasks(got)
            finally:
                for mid in got:
                    self.wake(mid)

    def import_bound_tasks(self, mids: list[str]) -> None:
        """F9: live tasks bound to these missions by someone else (tt's CLI hook, tt's own
        dispatcher before us) join the engine's bound-task index, so reconcile sees them and no
        item gets a second live task. One SCAN for all missions acquired in this round."""
        want = {f"mission:{m}": m for m in mids}
        keys = list(self.r.scan_iter(match=self.k.pattern("task"), count=1000))
        found: dict[str, list[str]] = {}
        for i in range(0, len(keys), 500):
            p = self.r.pipeline(transaction=False)
            for key in keys[i:i + 500]:
                p.hmget(key, "id", "state", "tags")
            for vals in p.execute(raise_on_error=False):
                if not isinstance(vals, list) or not vals[0] or vals[1] in TASK_TERMINAL:
                    continue
                for t in records.decode_tags(vals[2]):
                    if t in want:
                        found.setdefault(want[t], []).append(vals[0])
                        break
        if found:
            p = self.r.pipeline(transaction=False)
            for mid, tids in found.items():
                p.sadd(self.k.mission_tasks(mid), *tids)
            p.execute()

    # ------------------------------------------------------------------ notify loop
    def notify_loop(self) -> None:
        backoff = 0.5
        while not self.ctx.stopping.is_set():
            ps = None
            try:
                ps = self.r.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(self.k.notify)
                backoff = 0.5
                # a (re)connect may have missed notifications: sweep what we own
                for mid in list(self.owned):
                    self.wake(mid)
                while not self.ctx.stopping.is_set():
                    msg = ps.get_message(timeout=0.25)
                    self.ctx.progress("missions.notify")
                    if msg and msg.get("type") == "message":
                        self.on_notify(msg.get("data"))
            except (redis.RedisError, OSError) as e:
                self.log.warning("mission notify subscription failed; reconnecting",
                                 error=str(e), retry_in_s=backoff)
                self.ctx.stopping.wait(timeout=backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass

    def on_notify(self, data) -> None:
        try:
            j = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(j, dict):
            return
        mid = j.get("mission")
        if not mid and j.get("task"):
            try:
                tags = records.decode_tags(self.r.hget(self.k.task(j["task"]), "tags"))
            except redis.RedisError:
                tags = []
            mid = next((t[8:] for t in tags if t.startswith("mission:")), None)
        if mid in self.owned:
            if j.get("task"):
                # a bound task someone else created (tt's unlocked ticks) joins the index, so
                # its completion or failure is reconciled too (idempotent)
                try:
                    self.r.sadd(self.k.mission_tasks(mid), j["task"])
                except redis.RedisError:
                    pass
            self.wake(mid)
        elif mid and j.get("event") in ("started", "resumed"):
            self.lease_evt.set()
        if j.get("task") and j.get("state") in TASK_TERMINAL:
            for other in list(self.waiting_agent):   # an agent may be free now
                if other in self.owned:
                    self.wake(other)

    # ------------------------------------------------------------------ dispatch loop
    def dispatch_loop(self) -> None:
        next_sweep = time.monotonic() + self.sweep_s
        while not self.ctx.stopping.is_set():
            now = time.monotonic()
            timeout = min(1.0, max(0.0, next_sweep - now))
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - now))
            if not self.wake_set:
                self.wake_evt.wait(timeout=timeout)
            self.wake_evt.clear()
            self.ctx.progress("missions.dispatch")
            now = time.monotonic()
            due = set(self.wake_set)
            self.wake_set.clear()
            while self.timers and self.timers[0][0] <= now:
                due.add(heapq.heappop(self.timers)[2])
            if now >= next_sweep:
                due |= set(self.owned)
                next_sweep = now + self.sweep_s
            if self.draining:
                continue
            for mid in sorted(due):
                if mid in self.owned:
                    self.schedule(mid)

    def schedule(self, mid: str) -> None:
        if mid in self.ticking:
            self.dirty.add(mid)
            return
        self.ticking.add(mid)
        self.pool.spawn(self._tick_greenlet, mid)

    def _tick_greenlet(self, mid: str) -> None:
        with structlog.contextvars.bound_contextvars(mission=mid, town=self.k.town):
            try:
                while True:
                    self.dirty.discard(mid)
                    self._guarded_tick(mid)
                    if mid not in self.dirty or mid not in self.owned or self.draining:
                        break
            finally:
                self.ticking.discard(mid)

    def _guarded_tick(self, mid: str) -> None:
        try:
            with gevent.Timeout(max(5.0, self.ttl), TimeoutError("mission tick timed out")):
                self.tick(mid)
            self.errors.pop(mid, None)
        except Exception as e:  # per-mission isolation (B2, W1)
            n = self.errors.get(mid, 0) + 1
            self.errors[mid] = n
            self.stats["errors"] += 1
            delay = min(30.0, 0.5 * 2 ** min(n, 6))
            self.log.error("mission tick failed", error=f"{type(e).__name__}: {e}",
                           retry_in_s=delay, exc_info=not isinstance(e, (redis.RedisError,
                                                                          TimeoutError)))
            if mid in self.owned:
                self.timer(mid, delay)

    # ------------------------------------------------------------------ one tick
    def check_watches(self, snap, now) -> dict:
        results = {}
        due_pr = [w for w in snap.watches.values() if w.is_due(now)]
        due_cmd = [w for w in snap.cmd_watches.values() if w.is_due(now)]
        if due_pr:
            results.update(check_pr_watches(due_pr, self.gh, self.watch_sem))
        if due_cmd:
            jobs = {w.id: gevent.spawn(check_command_watch, w, self.watch_sem) for w in due_cmd}
            gevent.joinall(list(jobs.values()))
            for wid, g in jobs.items():
                if g.successful():
                    results[wid] = g.value
        self.stats["watch_checks"] += len(results)
        return results

    def tick(self, mid: str) -> None:
        st = self.owned.get(mid)
        if st is None or st.lost:
            return
        k = self.k
        pre = self.store.load_watches(mid)
        if pre.mission is None:
            self.drop(mid, "mission record deleted")
            return
        results = {}
        if pre.mission.state == "running":
            results = self.check_watches(pre, utcnow())
        keys = [k.mission_lock(mid), k.mission(mid), k.mission_work(mid), k.mission_watch(mid),
                k.mission_cmd_watches(mid)]
        for attempt in range(MAX_TX_RETRIES):
            with self.r.pipeline(transaction=True) as p:
                try:
                    p.watch(*keys)
                    if p.get(k.mission_lock(mid)) != self.token:          # fencing
                        self.stats["lease_lost"] += 1
                        self.log.warning("mission lease lost before write; not writing")
                        self.drop(mid, "lease lost", release=False)
                        return
                    with self.assign_lock:
                        out, inp = self._compute(mid, results)
                        if out is None:
                            p.unwatch()
                            self.drop(mid, "mission record deleted")
                            return
                        p.multi()
                        written = self._queue(p, mid, inp, out)
                        p.execute()
                        cache = self.item_cache.setdefault(mid, {})
                        for wid, raw in written.items():
                            cache[wid] = (raw, inp.items[wid])
                        if inp.depth is not None:
                            self.depth[mid] = inp.depth
                        self._after(mid, inp, out)
                    return
                except redis.WatchError:
                    self.stats["tx_conflicts"] += 1
                    self.item_cache.pop(mid, None)   # records were mutated in memory
                    continue
                except BaseException:
                    self.item_cache.pop(mid, None)
                    raise
        raise RuntimeError(f"gave up after {MAX_TX_RETRIES} conflicting writes")

    def _compute(self, mid: str, results: dict):
        t0 = time.perf_counter()
        snap = self.store.load(mid, cache=self.item_cache.setdefault(mid, {}))
        if snap.mission is None:
            return None, None
        for s in snap.skipped:
            self.log.warning("unreadable mission record skipped", detail=s)
        tasks = self.store.load_tasks(snap.task_ids)
        agents = self.agents()
        known = {a["id"] for a in agents}
        unknown = sorted({t["assigned_to"] for t in tasks.values()
                          if t.get("assigned_to") and t["assigned_to"] not in known})
        if unknown:   # registered since the last scan (e.g. by tt): look them up directly
            p = self.r.pipeline(transaction=False)
            for aid in unknown:
                p.hmget(self.k.agent(aid), self.AGENT_FIELDS)
            for vals in p.execute(raise_on_error=False):
                if isinstance(vals, list) and vals[0]:
                    agents.append({k: v for k, v in zip(self.AGENT_FIELDS, vals)
                                   if v is not None})
                    self._agent_ids.add(vals[0])
        busy = set()
        for other, s in self.busy.items():
            if other != mid:
                busy |= s
        inp = TickInput(mission=snap.mission, items=snap.items, watches=snap.watches,
                        cmd_watches=snap.cmd_watches,
                        controls=[c for c in snap.controls if c.processed_at is None],
                        tasks=tasks, agents=agents, meta=snap.meta, now=utcnow(),
                        watch_results=results, busy_agents=busy, cfg=self.sched,
                        depth=self.depth.get(mid))
        inp._t0 = t0  # type: ignore[attr-defined]
        out = run_tick(inp)
        out.tasks_processed |= snap.task_ids - set(tasks)   # deleted task hashes leave the index
        return out, inp

    AGENT_FIELDS = ("id", "name", "nickname", "role_id", "state", "last_active_at")

    def agents(self) -> list[dict]:
        """The agent snapshot for a tick. The set of agent keys comes from a SCAN at most every
        AGENT_SCAN_S (plus tinytownd's name registry every time), so a tick costs one pipelined
        HMGET round trip instead of a scan of the whole keyspace (B13)."""
        now = time.monotonic()
        if now - self._agent_scan_at >= AGENT_SCAN_S:
            pre = len(self.k.agent(""))
            self._agent_ids = {key[pre:] for key in
                               self.r.scan_iter(match=self.k.pattern("agent"), count=1000)}
            self._agent_scan_at = now
        ids = sorted(self._agent_ids | set(self.r.hvals(self.k.agent_names)))
        p = self.r.pipeline(transaction=False)
        for aid in ids:
            p.hmget(self.k.agent(aid), self.AGENT_FIELDS)
        out = []
        for vals in p.execute(raise_on_error=False):
            if isinstance(vals, list) and vals[0]:
                out.append({k: v for k, v in zip(self.AGENT_FIELDS, vals) if v is not None})
        return out

    def _queue(self, p, mid: str, inp: TickInput, out) -> dict:
        k, store = self.k, self.store
        written = {}
        for wid in out.items_changed:
            raw = written[wid] = inp.items[wid].to_json()
            p.hset(k.mission_work(mid), wid, raw)
        for wid in out.watches_changed:
            store.q_watch(p, inp.watches[wid])
        for wid in out.cmd_watches_changed:
            store.q_cmd_watch(p, inp.cmd_watches[wid])
        for c in out.controls_processed:
            store.q_control(p, c)
        for tid, reason in out.cancel_tasks:
            store.q_cancel(p, tid, reason, mid)
        if out.tasks_processed:
            p.srem(k.mission_tasks(mid), *out.tasks_processed)
        for nt in out.new_tasks:
            self.town.assign(nt.agent, nt.description, tags=nt.tags, new_task_id=nt.task_id,
                             meta={"mission": mid, "work_item": nt.work_item_id}, pipe=p)
            p.sadd(k.mission_tasks(mid), nt.task_id)
        if out.meta_set:
            p.hset(k.mission_meta(mid), mapping=out.meta_set)
        if out.meta_del:
            p.hdel(k.mission_meta(mid), *out.meta_del)
        for to, mtype, fields in out.messages:
            self.town.send(to, mtype, pipe=p, **fields)
        if out.help_question:
            store.q_help(p, out.help_question)
        now = inp.now
        for line in out.log:
            store.q_log(p, mid, line, now)
        store.q_mission(p, out.mission)
        if out.completed:
            p.srem(k.missions_active, mid)
        return written

    def _after(self, mid: str, inp: TickInput, out) -> None:
        self.stats["ticks"] += 1
        self.stats["last_tick_ms"] = round((time.perf_counter() - inp._t0) * 1000, 3)
        self.stats["assigned"] += len(out.assigned)
        if out.help_question:
            self.stats["help_requests"] += 1
        self.last_tick[mid] = time.monotonic()
        for line in out.log:
            self.log.info(line)
        if out.completed:
            self.busy.pop(mid, None)
            self.drop(mid, f"mission {out.mission.state}")
            return
        # remember who works for this mission (cross-mission agent accounting)
        live = set()
        gone = out.tasks_processed | {t for t, _ in out.cancel_tasks}
        for tid, t in inp.tasks.items():
            if tid not in gone and t.get("state") not in TASK_TERMINAL and t.get("assigned_to"):
                live.add(t["assigned_to"])
        live |= {nt.agent for nt in out.new_tasks}
        self.busy[mid] = live
        m = out.mission
        if m.state != "running":
            self.waiting_agent.pop(mid, None)
            return
        # timers: watches, agent-wait retries
        now = utcnow()
        # a watch never checked is due at once; re-checks wait at least MIN_RECHECK_S even
        # with interval_secs 0 (no busy loop against gh or a command)
        dues = [max((w.next_due_at - now).total_seconds(),
                    0.0 if w.last_check_at is None else MIN_RECHECK_S)
                for w in list(inp.watches.values()) + list(inp.cmd_watches.values())
                if w.status in ("active", "snoozed")]
        if dues:
            self.timer(mid, min(dues))
        if out.waiting_for_agent and not out.assigned:
            d = self.waiting_agent.get(mid, AGENT_WAIT_MIN_S / 2) * 2
            d = min(d, AGENT_WAIT_MAX_S)
            self.waiting_agent[mid] = d
            self.timer(mid, d)
        elif out.waiting_for_agent:
            self.waiting_agent[mid] = AGENT_WAIT_MIN_S
            self.timer(mid, AGENT_WAIT_MIN_S)
        else:
            self.waiting_agent.pop(mid, None)
        # stall-based help fires at last progress + threshold; the sweep also covers it
        since = m.dispatcher_last_progress_at or m.created_at
        left = (since + timedelta(seconds=self.sched.stall_threshold_s) - now).total_seconds()
        if 0 < left < self.sweep_s:
            self.timer(mid, left + 0.01)
