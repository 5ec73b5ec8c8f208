"""MissionEngine: the daemon component that drives missions.

Services (run by the daemon's supervisor, each returns when ctx.stopping is set):
  missions.leases    every min(1 s, ttl/3): heartbeat this engine in the engine registry, renew
                     held leases (a failed renewal drops the mission at once), release missions
                     that left the active set, acquire active missions up to a fair share
                     (ceil(active / live engines), rendezvous-hash preference), release the
                     excess when another engine joins.
  missions.dispatch  timer heap (watch next_due_at, agent-wait retries, error backoff) + wake set
                     (task notifications, operator commands) + a slow safety sweep
                     (missions.sweep_interval_s); ticks run in a greenlet pool, one at a time
                     per mission, each with `mission` bound in the log context.
  missions.notify    SUBSCRIBE keys.notify: a task reaching a terminal state wakes its mission at
                     once; operator commands publish {"mission": id} to wake or acquire.

A tick first checks the due watches outside any transaction (watch_checks.py: gh and commands,
with timeouts), then reads, schedules and writes in one fenced transaction (tick_io.py). An
error in one mission's tick is logged and retried with backoff, never stopping the others.
"""
from __future__ import annotations

import hashlib
import heapq
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
from tinytownd.config import Config
from tinytownd.daemon.component import Component, Context
from tinytownd.store import quarantine, records
from tinytownd.store.refusals import transient
from tinytownd.store.leases import Leases
from tinytownd.store.scripts import Scripts
from tinytownd.store.wire import TASK_TERMINAL, new_id, utcnow

from .storage import MissionStore, UnreadableMission
from .tick import SchedConfig, TickInput, TickOutput
from .tick_io import DELETED, LEASE_LOST, TickIO
from .watch_checks import GhClient, check_due_watches
from .work import task_binding

AGENT_WAIT_MIN_S = 0.02
AGENT_WAIT_MAX_S = 5.0
MIN_RECHECK_S = 1.0
BACKOFF_MAX_S = 5.0          # lease/notify retries while Redis is away (each reports progress)


class LeaseState:
    """What the engine remembers about a mission lease it holds."""

    __slots__ = ("mid", "refreshed", "lost")

    def __init__(self, mid: str):
        self.mid = mid
        self.refreshed = time.monotonic()
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
        self.keys = ctx.keys
        town = ctx.extra.get("town")
        if town is None:
            from tinytownd.store.town import Town
            town = Town(self.r, self.keys)
        self.town = town
        self.store = MissionStore(self.r, self.keys, town)
        self.token = new_id()
        cfg = ctx.config.missions
        self.leases = Leases(self.r, self.keys.mission_lock, self.token, cfg.lease_ttl_s,
                             Scripts(self.r))
        self.owned: dict[str, LeaseState] = {}
        self.ticking: set[str] = set()
        self.dirty: set[str] = set()
        self.waiting_agent: dict[str, float] = {}      # mid -> current retry delay
        self.busy: dict[str, set[str]] = {}            # mid -> assignees of its live tasks
        self.errors: dict[str, int] = {}
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
        self.stats = {"ticks": 0, "assigned": 0, "tx_conflicts": 0, "lease_lost": 0,
                      "errors": 0, "watch_checks": 0, "help_requests": 0}
        self.io = TickIO(self.r, self.keys, self.store, self.town, self.token, self.stats)
        self._apply_config(ctx.config)
        # a new primary (failover, restart): renew held leases now, acquire none for a while
        self.watch = ctx.extra.get("watch")
        if self.watch is not None:
            self.watch.listen(self.revalidate)

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
        self.leases.release_all(self.owned)
        self.owned.clear()
        try:
            self.store.engine_leave(self.token)
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

    def drop(self, mid: str, why: str, release: bool = True) -> None:
        st = self.owned.pop(mid, None)
        if st is None:
            return
        st.lost = True
        self.busy.pop(mid, None)
        self.io.forget(mid)
        self.waiting_agent.pop(mid, None)
        if release:
            try:
                self.leases.release(mid)
            except redis.RedisError:
                pass
        self.log.info("mission released", mission=mid, reason=why)

    def revalidate(self) -> None:
        """Renew every held mission lease in the next lease round (daemon/failover.py)."""
        for st in self.owned.values():
            st.refreshed = 0.0
        self.lease_evt.set()

    # ------------------------------------------------------------------ lease loop
    def lease_loop(self) -> None:
        backoff = 0.5
        failing = False
        while not self.ctx.stopping.is_set():
            try:
                self.lease_round()
                backoff, failing = 0.5, False
                self.ctx.progress("missions.leases")
                period = min(1.0, self.ttl / 3)
            except (redis.RedisError, OSError) as e:
                if quarantine.is_wrongtype(e) and quarantine.quarantine(
                        self.town, self.store.engine_keys(), log=self.log):
                    continue
                if not failing:         # once per outage, not once per retry
                    self.log.warning("mission lease round failed; retrying", error=str(e),
                                     retry_in_s=backoff)
                failing = True
                if transient(e):        # Redis away is not a wedged daemon (watchdog)
                    self.ctx.progress("missions.leases")
                period, backoff = backoff, min(backoff * 2, BACKOFF_MAX_S)
            self.lease_evt.wait(timeout=period)
            self.lease_evt.clear()

    def lease_round(self) -> None:
        now = time.monotonic()
        engines, active = self.store.engine_heartbeat(self.token, 3 * self.ttl)
        # renew / drop what we hold
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
        if self.draining or (self.watch is not None and self.watch.holding()):
            return      # (just after a failover, owners re-assert their leases first)
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
                try:
                    self.store.bump_fence(mid)
                except redis.RedisError:
                    pass
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
        """Live tasks bound to these missions by someone else (tt's CLI, tt's own dispatcher
        before us) join the bound-task index, so reconcile sees them and no item gets a second
        live task."""
        self.store.bind_tasks(self.store.live_tasks_tagged(mids))

    # ------------------------------------------------------------------ notify loop
    def notify_loop(self) -> None:
        backoff = 0.5
        while not self.ctx.stopping.is_set():
            ps = None
            try:
                ps = self.r.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(self.keys.notify)
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
                if transient(e):        # Redis away is not a wedged daemon (watchdog)
                    self.ctx.progress("missions.notify")
                self.ctx.stopping.wait(timeout=backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                if ps is not None:
                    try:
                        ps.close()
                    except Exception:
                        pass

    def on_notify(self, data) -> None:
        """A task or mission note wakes the mission it concerns. What is not a note is skipped
        here (the runtime's listener dead-letters it)."""
        try:
            j = records.parse_note(data)
        except records.Poison:
            return
        mid = j.get("mission")
        if not mid and j.get("task"):
            try:
                tags = records.decode_tags(self.r.hget(self.keys.task(j["task"]), "tags"))
            except redis.RedisError:
                tags = []
            mid = task_binding(tags)[0]
        if mid in self.owned:
            if j.get("task"):
                # a bound task someone else created (tt's unlocked ticks) joins the index, so
                # its completion or failure is reconciled too (idempotent)
                try:
                    self.store.bind_tasks({mid: [j["task"]]})
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
        with structlog.contextvars.bound_contextvars(mission=mid, town=self.keys.town):
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
        except UnreadableMission as e:
            self.log.error("mission record unreadable: dead-lettered, mission dropped",
                           reason=e.reason)
            self.store.bury_mission(e)
            self.drop(mid, "unreadable mission record")
        except redis.ResponseError as e:
            if quarantine.is_wrongtype(e) and quarantine.quarantine(
                    self.town, self.store.expected_types(mid), log=self.log):
                self.timer(mid, 0.0)
                return
            self._tick_failed(mid, e)
        except Exception as e:  # one mission's failure never stops the others
            self._tick_failed(mid, e)

    def _tick_failed(self, mid: str, e: Exception) -> None:
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
    def tick(self, mid: str) -> None:
        st = self.owned.get(mid)
        if st is None or st.lost:
            return
        pre = self.store.load_watches(mid)
        if pre.mission is None:
            self.drop(mid, "mission record deleted")
            return
        results = {}
        if pre.mission.state == "running":
            results = check_due_watches(pre.watches, pre.cmd_watches, utcnow(), self.gh,
                                        self.watch_sem)
            self.stats["watch_checks"] += len(results)
        done = self.io.run(mid, results, self.sched, lock=self.assign_lock, busy=self.busy,
                           after=self.after_tick)
        if done == LEASE_LOST:
            self.stats["lease_lost"] += 1
            self.log.warning("mission lease lost before write; not writing")
            self.drop(mid, "lease lost", release=False)
        elif done == DELETED:
            self.drop(mid, "mission record deleted")

    def after_tick(self, mid: str, inp: TickInput, out: TickOutput, started: float) -> None:
        """The engine's side of a written tick (still under the assignment lock): counters,
        which agents now work for this mission, and when to tick it next."""
        self.stats["ticks"] += 1
        self.stats["last_tick_ms"] = round((time.perf_counter() - started) * 1000, 3)
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
