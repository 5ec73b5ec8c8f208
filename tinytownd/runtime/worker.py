"""One agent's worker loop (a greenlet): take a round at-least-once, run it, take the next.

The loop (keys in store/keys.py, scripts in store/lua/):
  1. take_round (one Lua call): fenced by the agent lease; honours the stop flag, the paused /
     stopped states and the CLI's town-wide pause or cooldown (store/cli_state.py: the agent
     waits it out); moves every urgent message → inflight_urgent and inbox messages → inflight
     until one task-bearing message (task_assign / task) is in flight.
  2. Nothing taken: the agent is idle and parks in BLMOVE inbox → inflight on the blocking pool
     (a server-side timeout; the runtime wakes it early with a ping), then takes again.
  3. Something taken: one round (round.py): the CLI runs, then the round is acked, retried or
     failed. The end of a successful round takes the next round in the same atomic call.
A crash at any point leaves the messages in flight; the next start of the worker (this daemon or
another one that takes the lease over) moves them back to the queue heads: nothing is lost, and a
duplicate run after a crash is possible. A new primary (a failover) is treated like a crash:
what the worker wrote to the old one just before may be gone, and what it moved in flight there
may be in the new one's in-flight list with no round behind it, so the worker starts over
(`resync`, set by the runtime) once its current round has ended.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

import gevent
import gevent.event
import redis
import structlog

from tinytownd.config import Config
from tinytownd.store import events, quarantine, records
from tinytownd.store.leases import Leases
from tinytownd.store.scripts import Scripts
from tinytownd.store.town import Town
from tinytownd.store.records import DEADLETTER_KEPT, MESSAGE_MAX_BYTES
from tinytownd.store.refusals import transient
from tinytownd.store.wire import hash_ts, json_ts

from .agent_cli.cooldown import agent_wait_s
from .cli_env import CliEnvCache
from .round import MAX_INBOX_PER_ROUND, Round, started_of, unstart
from .settings import AgentSettings


class Resync(Exception):
    """The primary changed under the worker: start over from what the new one holds."""


CRASHES_BEFORE_DEADLETTER = 3   # worker crashes on one round before that round is dead-lettered
ACTIVITY_EXPIRE_EVERY_S = 60.0  # a round end refreshes the activity list's expiry this often


class BacklogSignal:
    """Between idle agents and the backlog service: whether the backlog may hold work, and a
    way to wake the claims when an agent becomes idle."""

    def __init__(self, wake: Callable[[], None]):
        self.waiting = True
        self.wake = wake


@dataclass
class WorkerLinks:
    """Everything a worker uses of the runtime that hosts it."""
    town: Town                         # records (town.r is the command pool, town.keys the keys)
    scripts: Scripts                   # the runtime's scripts (kept connections)
    block: redis.Redis                 # the blocking pool: idle agents park on it
    owner: str                         # this daemon's lease token
    leases: Leases                     # agent leases
    config: Callable[[], Config]       # the live config (reload replaces it)
    stopping: gevent.event.Event       # set when the daemon drains
    progress: Callable[[str], None]    # feeds the watchdog
    env: CliEnvCache                   # CLI environments
    backlog: BacklogSignal
    log: object                        # the runtime's logger
    spawn_hooks: list = field(default_factory=list)   # hook(worker, task id, pid) at each CLI start
    lifeline: object = None            # lifeline.Lifeline: CLIs end with the daemon
    patience: object = None            # refusals.Patience: waiting out Redis, logged once
    cli_state: object = None           # store.cli_state.CliState: CLI cooldowns and pauses
    workspaces: object = None          # workspaces.manager.WorkspaceManager (worktree mode)


PARK_JITTER = 0.2


def idle_park_s(cfg: Config, rand: float = 0.0) -> float:
    """BLMOVE timeout of a parked idle agent (woken early by the runtime's ping), shortened by
    up to PARK_JITTER at random (`rand` in [0, 1)): agents started together would otherwise
    re-park together, 1,000 of them in one burst every few seconds that held up a pickup or a
    scrape for tens of milliseconds; the jitter spreads them within a few parks."""
    rt = cfg.runtime
    base = max(rt.block_timeout_s, min(rt.heartbeat_interval_s, rt.lease_ttl_s / 3))
    return round(base * (1.0 - PARK_JITTER * rand), 3)


def idle_timeout_due(cfg: Config, idle_since: float) -> bool:
    """Whether an agent idle since `idle_since` (time.monotonic()) has reached its idle timeout
    (runtime.idle_timeout_s; 0: never)."""
    it = cfg.runtime.idle_timeout_s
    return it > 0 and time.monotonic() - idle_since >= it


class Worker:
    def __init__(self, links: WorkerLinks, settings: AgentSettings):
        self.links = links
        self.settings = settings
        self.aid = settings.aid
        self.keys = links.town.keys
        self.r = links.town.r
        self.greenlet: gevent.Greenlet | None = None
        self.state = "starting"
        self.idle = False             # parked in BLMOVE
        self.stop_requested = False   # finish the current round, then exit (drain / removal)
        self.kill_now = False         # kill the running CLI (operator kill, drain deadline)
        self.lost = False             # the lease is gone: stop at once, touch nothing
        self.resync = False           # the primary changed: start over after this round
        self.woken = False            # a wake-up ping was pushed since the agent parked
        self.pid: int | None = None   # of the running CLI
        self.current_task: str | None = None
        self.rounds = 0
        self.round_started: float | None = None
        self.crashes = 0
        self.started_at = time.monotonic()
        self.exit_reason = ""
        self.extra_ack: list[tuple[str, str, str, str]] = []   # acked with the next round end
        self.next_take = None         # the next round's take_round reply, taken by round_ok_take
        self.take_keys: list[str] = []
        self.round_tasks: list[str] = []   # task ids the current round reads (quarantine)
        self.round_streams: list[str] = []  # event streams its end writes besides the agent's
        self.wrongtype_races = quarantine.Races()
        self.round_logs = None        # RoundLogs, made with the first round
        self.problem: str | None = None    # why rounds cannot run now (shown in status)
        self.deferrals = 0            # rounds deferred in a row (their backoff grows)
        self.crashes_to_clear = False  # agent info has a crash count the next round end clears
        self.last_exit: str | None = None  # agent info's last_exit as this worker wrote it
        self.activity_expired_at = float("-inf")   # last EXPIRE of the activity list (monotonic)
        self.cli_wait: dict | None = None   # the CLI's pause or cooldown this agent waits out
        self._take_cli: str | None = None   # the CLI whose state key take_keys holds

    def take_args(self) -> list:
        """ARGV of lua/take_round.lua (also the second half of round_ok_take); with the last
        one the take starts the round of a task_assign itself (Round.started)."""
        return [self.links.owner, MAX_INBOX_PER_ROUND, self.keys.prefix, MESSAGE_MAX_BYTES,
                json_ts(), DEADLETTER_KEPT, int(self.links.leases.ttl_s * 1000), hash_ts()]

    def queue_keys(self) -> list[str]:
        """urgent, inbox and their in-flight lists: the KEYS of requeue_inflight."""
        k, a = self.keys, self.aid
        return [k.inflight_urgent(a), k.inflight(a), k.urgent(a), k.inbox(a)]

    def activity_expiry_due(self) -> bool:
        """Whether this round's end refreshes the activity list's EXPIRE (at most once per
        ACTIVITY_EXPIRE_EVERY_S: the list is kept 3600 s after the last activity, give or take
        that much; a key recreated meanwhile gets its expiry at the next refresh)."""
        now = time.monotonic()
        if now - self.activity_expired_at < ACTIVITY_EXPIRE_EVERY_S:
            return False
        self.activity_expired_at = now
        return True

    def running_cli(self) -> bool:
        return self.pid is not None

    def leaving(self) -> bool:
        return self.stop_requested or self.links.stopping.is_set() or self.lost

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        with structlog.contextvars.bound_contextvars(agent=self.settings.name, agent_id=self.aid):
            self.log = self.links.log.bind()
            pause = 0.0
            try:
                while True:
                    try:
                        self._start()
                        self._loop()
                        return
                    except Resync:
                        self.log.info("the primary changed: starting over from what it holds")
                        pause = 0.0
                    except redis.exceptions.NoScriptError:
                        self.links.scripts.reload()     # Redis restarted without our scripts
                        self.next_take = None
                    except redis.ResponseError as e:
                        if not self._quarantine(e):   # a key of the wrong type: moved away
                            if not transient(e) or self.leaving():
                                raise
                            pause = self.links.patience.failed(e, pause)
                            self.links.stopping.wait(pause)
                        self.next_take = None
                    except redis.RedisError as e:
                        # Redis away or refusing writes: not this agent's fault, and no crash;
                        # once it is back, start over (in-flight messages are requeued)
                        if not transient(e) or self.leaving():
                            raise
                        self.next_take = None
                        pause = self.links.patience.failed(e, pause)
                        self.links.stopping.wait(pause)
            except gevent.GreenletExit:
                self.exit_reason = self.exit_reason or "killed"
                raise
            finally:
                self._finish()

    def _start(self) -> None:
        k, a, town = self.keys, self.aid, self.links.town
        self.resync = False
        crashes, error = self.r.hmget(k.agent_info(a), "crashes", "crash_error")
        if int(crashes or 0) >= CRASHES_BEFORE_DEADLETTER:
            self._bury_inflight(int(crashes), error or "")
        else:
            self.crashes_to_clear = crashes is not None
        p = self.r.pipeline(transaction=False)
        town.clear_stop(a, p)
        self.links.scripts.requeue_inflight(keys=self.queue_keys(), client=p)
        p.hset(k.agent_info(a), mapping={"owner": self.links.owner, "cli": self.settings.cli,
                                         "started_at": hash_ts()})
        p.hdel(k.agent_info(a), "pid")
        p.hmget(k.agent(a), "state", "rounds_completed", "current_task")
        res = p.execute()
        moved = int(res[1])
        old, rounds, cur = res[-1]
        self.rounds = int(rounds or 0)
        if moved:
            self.log.info("requeued in-flight messages", count=moved)
        p = self.r.pipeline(transaction=False)
        if cur:
            town.clear_current_task(a, p)
        # An agent the operator paused stays paused across a daemon restart.
        new = "paused" if old == "paused" else "idle"
        town.set_agent_state(a, new, old=old, pipe=p, stamp_active=True)
        p.execute()
        self.state = new
        self.log.info("agent started", previous_state=old)

    def _bury_inflight(self, crashes: int, error: str) -> None:
        """The worker died on the same round again and again: whatever input does that must not
        be retried for ever. The round's messages go to the dead-letter list and their tasks
        fail with the reason."""
        k, a, town = self.keys, self.aid, self.links.town
        reason = f"the agent's worker crashed {crashes} times on this round: {error[:500]}"
        taken = [(k.inflight_urgent(a), k.urgent(a)), (k.inflight(a), k.inbox(a))]
        p = self.r.pipeline(transaction=True)
        tids = []
        for inflight, queue in taken:
            for raw in self.r.lrange(inflight, 0, -1):
                town.deadletter(reason, queue, raw, pipe=p, agent=a)
                try:
                    msg = records.decode_message(raw)
                    if msg["type"] == "task_assign":
                        tids.append(msg["task_id"])
                except records.Poison:
                    pass
            p.delete(inflight)
        p.hdel(k.agent_info(a), "crashes", "crash_error")
        p.execute()
        for tid in tids:
            try:
                town.fail_task(tid, reason)
            except LookupError:
                pass
        self.log.error("round dead-lettered after repeated worker crashes", crashes=crashes,
                       error=error[:500], tasks=tids)

    def _loop(self) -> None:
        k, a, links = self.keys, self.aid, self.links
        self._take_keys()
        idle_since = time.monotonic()
        announced = False
        while True:
            if self.leaving():
                self._drop_next_take()
                self.exit_reason = self.exit_reason or "shutdown"
                return
            if self.resync:
                self._drop_next_take()
                raise Resync()
            try:
                res = self._take()
            except redis.ResponseError as e:
                if self._quarantine(e):
                    continue
                raise
            links.patience.ok()
            status = res[0]
            if status == "lost":
                self.lost = True
                self.exit_reason = "lease lost"
                self.log.warning("lease lost: another daemon runs this agent now",
                                 holder=res[1] if len(res) > 1 else None)
                return
            if status == "stop":
                self.r.delete(k.stop(a))
                self.exit_reason = "stop flag"
                return
            if status == "stopped":
                self.exit_reason = "state stopped"
                return
            cfg = links.config()
            if status in ("cli_paused", "cooldown"):
                self._wait_for_cli(res)
                idle_since = time.monotonic()
                continue
            if self.cli_wait is not None:
                self.cli_wait = self.problem = None
            if status == "paused":
                self.state = "paused"
                self.idle = False
                links.stopping.wait(min(1.0, cfg.runtime.block_timeout_s))
                idle_since = time.monotonic()
                continue
            nu = int(res[1])
            items = res[2]
            if not items:
                self.state = "idle"
                if idle_timeout_due(cfg, idle_since):
                    self._idle_timeout()
                    return
                if not announced:
                    announced = True
                    if links.backlog.waiting:
                        links.backlog.wake()
                self._park(idle_since)
                continue
            self.idle = False
            announced = False
            try:
                Round(self, items[:nu], items[nu:], res[3]).run()
            except redis.ResponseError as e:
                if not self._quarantine(e):
                    raise
            idle_since = time.monotonic()
            links.progress("agents")

    def _park(self, idle_since: float) -> None:
        """Wait in BLMOVE on the inbox until something arrives (a message, or the runtime's
        wake-up ping), the agent leaves, or its idle timeout is due. A park that times out
        empty parks again at once, without a round take: the heartbeat pass watches what the
        take would have found meanwhile (urgent mail, the stop flag, a paused or stopped state)
        and wakes the agent for it, and a take per re-park was half of an idle town's CPU."""
        k, a, links = self.keys, self.aid, self.links
        while not (self.leaving() or self.resync):
            cfg = links.config()
            if idle_timeout_due(cfg, idle_since):
                return                       # the next take finds nothing and times out
            self.idle, self.woken = True, False
            try:
                moved = links.block.blmove(k.inbox(a), k.inflight(a),
                                           idle_park_s(cfg, random.random()), "LEFT", "RIGHT")
            finally:
                self.idle = False
            if moved is not None:
                return

    def _take_keys(self) -> list[str]:
        """KEYS of take_round.lua; the last one is the state of the agent's CLI (a reload may
        change the CLI)."""
        if self._take_cli != self.settings.cli or not self.take_keys:
            k, a = self.keys, self.aid
            self._take_cli = self.settings.cli
            self.take_keys = [k.urgent(a), k.inbox(a), k.inflight_urgent(a), k.inflight(a),
                              k.stop(a), k.agent(a), k.agent_lease(a), k.deadletter,
                              k.cli(self.settings.cli)]
        return self.take_keys

    def _take(self):
        if self.next_take is not None:     # taken with the end of the last round
            res, self.next_take = self.next_take, None
            return res
        return self.links.scripts.take_round(keys=self._take_keys(), args=self.take_args())

    def _wait_for_cli(self, res) -> None:
        """The CLI is paused (a fatal error) or cooling down (a rate limit) for the town: the
        take put everything back; wait, then look again (status shows why)."""
        name = self.settings.cli
        self.idle = False
        self.state = "idle"
        if res[0] == "cli_paused":
            self.cli_wait = {"cli": name, "paused": True, "reason": res[1]}
            self.problem = f"CLI {name} is paused: {res[1]} (tinytownd resume-cli {name})"
            wait = 1.0
        else:
            until, now = int(res[1]), int(res[2])
            self.cli_wait = {"cli": name, "cooldown_until": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(until / 1000)), "reason": res[3]}
            self.problem = (f"CLI {name} cools down for {(until - now) / 1000:.0f}s after a "
                            f"rate limit: {res[3]}")
            wait = agent_wait_s(until, now, random.random())
        self.links.stopping.wait(wait)

    def expected_types(self) -> dict[str, str]:
        """The Redis type of every key a round of this agent uses."""
        k, a = self.keys, self.aid
        out = {k.urgent(a): "list", k.inbox(a): "list", k.inflight_urgent(a): "list",
               k.inflight(a): "list", k.agent(a): "hash", k.agent_info(a): "hash",
               k.agent_lease(a): "string", k.activity(a): "list", k.delayed: "zset",
               k.deadletter: "list", k.events: "stream", k.agent_events(a): "stream",
               k.cli(self.settings.cli): "hash"}
        for tid in self.round_tasks:
            out[k.task(tid)] = out[k.task_meta(tid)] = "hash"
        for key in self.round_streams:
            out[key] = "stream"
        return out

    def _quarantine(self, e: redis.ResponseError) -> bool:
        """WRONGTYPE: move the keys of the wrong type away (store/quarantine.py) and go on.
        False when none was found (the error is something else)."""
        if not quarantine.is_wrongtype(e):
            return False
        moved = quarantine.quarantine(self.links.town, self.expected_types(), log=self.log)
        self.round_tasks, self.round_streams = [], []
        return self.wrongtype_races.tolerate(moved)

    def _drop_next_take(self) -> None:
        """A stop arrived after round_ok_take took the next round: its messages go back to the
        queue heads (as if never taken; the take is fenced, so they are ours to move)."""
        taken, self.next_take = self.next_take, None
        if taken is None or taken[0] != "ok" or not taken[2] or self.lost:
            return
        try:
            unstart(self, started_of(taken[3]))
            self.links.scripts.requeue_inflight(keys=self.queue_keys())
        except redis.RedisError as e:   # they stay in flight: the next start requeues them
            self.log.warning("could not requeue taken messages", error=str(e))

    def _idle_timeout(self) -> None:
        self.log.info("idle timeout: draining")
        self.links.town.set_agent_state(self.aid, "draining", old="idle")
        self.links.town.log_activity(self.aid, "⏳ Idle timeout (draining then stop)")
        self.exit_reason = "idle timeout"

    def _finish(self) -> None:
        """Exit bookkeeping: stopped state + event + lease release (unless the lease is gone)."""
        self.idle = False
        self.pid = None
        if self.lost:
            return
        town = self.links.town
        try:
            k, a = self.keys, self.aid
            old = self.r.hget(k.agent(a), "state")
            p = self.r.pipeline(transaction=False)
            town.set_agent_state(a, "stopped", old=old, pipe=p)
            town.emit(events.agent_stopped(
                a, f"Agent {self.settings.name} stopped ({self.exit_reason})"), pipe=p)
            p.hdel(k.agent_info(a), "pid")
            p.execute()
            self.links.leases.release(a)
            self.state = "stopped"
            self.log.info("agent stopped", reason=self.exit_reason)
        except redis.RedisError as e:
            self.log.warning("could not record agent stop", error=str(e))

