"""The town runtime component: runs the town's agents inside the daemon.

`TownRuntime(ctx)` (loaded by the daemon as `tinytownd.runtime.town_runtime:TownRuntime`)
registers the agents of the config (`agents`, `agent_clis`, `count`, `adopt`), holds a renewable
lease per agent it runs, and runs one worker greenlet per agent (worker.py) in a gevent Pool. Its
services, run and restarted by the daemon's supervisor:

  agents       agents_service.py: registration, one heartbeat pass for all running agents,
               starting agents that are not running, adopting tt's agents, waking parked ones.
  retry-timer  retry_timer.py: due retry envelopes back to their queues.
  backlog      backlog.py: idle agents claim fitting backlog tasks.
  sweeper      recovery.py: agents of dead daemons → stopped, their queues moved on.
  workspaces   workspaces/manager.py: at start `git worktree prune` of the agents' repositories,
               and (then every 30 s) the keep policy for worktrees whose task has ended.
"""
from __future__ import annotations

import time

import gevent
import gevent.event
import redis
from gevent.pool import Pool

from tinytownd.config import AgentSpec, Config
from tinytownd.daemon.component import Component, Context
from tinytownd.daemon.redis_clients import make_pool
from tinytownd.logs import get_logger
from tinytownd.store.cli_state import CliState, describe
from tinytownd.store.durability import Durability
from tinytownd.store.leases import Leases, owner_token
from tinytownd.store.refusals import Patience, refusal
from tinytownd.store.scripts import KEEP, Scripts
from tinytownd.store.town import Town
from tinytownd.workspaces.manager import WorkspaceManager

from . import gc_tuning
from . import settings as agent_settings
from .agent_cli.usage import usage_view
from .agents_service import AgentsService
from .backlog import BacklogClaims
from .cli_env import CliEnvCache
from .lifeline import Lifeline
from .recovery import Sweeper
from .retry_timer import retry_timer
from .settings import AgentSettings
from .worker import BacklogSignal, Worker, WorkerLinks

CRASH_BACKOFF_MAX_S = 30.0
USAGE_SHOWN = ("input_tokens", "output_tokens", "cached_tokens", "cost_usd")
QUICK_CRASH_S = 60.0       # a worker that dies within this keeps its crash count (backoff grows)


class TownRuntime(Component):
    name = "runtime"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.keys = ctx.keys
        self.log = get_logger("runtime", town=ctx.keys.town)
        self.r: redis.Redis = ctx.clients.cmd
        self._own_block = None
        self.block = self._block_client(ctx.config.blocking_connections)
        # kept connections (see scripts.py), at most 1 per 16 of the pool's
        pool_max = getattr(self.r.connection_pool, "max_connections", 0) or 0
        self.scripts = Scripts(self.r, keep=min(KEEP, pool_max // 16))
        self.town = Town(self.r, self.keys, log=get_logger("town", town=ctx.keys.town),
                         task_events=ctx.config.runtime.task_events)
        self.owner = owner_token(ctx.instance_id)
        self.leases = Leases(self.r, self.keys.agent_lease, self.owner,
                             ctx.config.runtime.lease_ttl_s, self.scripts)
        self.stopping = ctx.stopping
        self.pool = Pool()
        self.workers: dict[str, Worker] = {}
        self.specs: dict[str, AgentSettings] = {}
        self.initial_done = False
        self._unknown_cli_logged: set[str] = set()
        self.restart_at: dict[str, float] = {}
        self.backlog = BacklogClaims(self)
        self.lifeline = Lifeline(ctx.config.root, log=self.log)
        self.patience = Patience(self.log)
        self.cli_state = CliState(self.r, self.keys, self.scripts)
        self.links = WorkerLinks(
            town=self.town, scripts=self.scripts, block=self.block, owner=self.owner,
            leases=self.leases, config=lambda: self.ctx.config, stopping=self.stopping,
            progress=self.progress, env=CliEnvCache(self.keys.town, lambda: ctx.clients.url),
            backlog=BacklogSignal(self.backlog.wake), log=self.log, lifeline=self.lifeline,
            patience=self.patience, cli_state=self.cli_state,
            workspaces=WorkspaceManager(self.r, self.keys, log=self.log, lifeline=self.lifeline,
                                        dirs=lambda: {s.workspace.dir for s in self.specs.values()
                                                      if s.workspace is not None}))
        self.agents = AgentsService(self)
        self.sweeper = Sweeper(self)
        ctx.extra["town"] = self.town
        ctx.extra["runtime"] = self
        # redis.wait_replicas: WAIT after the writes that carry work (store/durability.py)
        self.durability = Durability.from_config(ctx.config, self.log)
        self.town.set_durability(self.durability)
        self.scripts.durability = self.durability
        # a new primary (failover, restart): leases re-validated first (daemon/failover.py)
        self.watch = ctx.extra.get("watch")
        if self.watch is not None:
            self.watch.listen(self.primary_changed)
            if self._own_block is not None:
                self.watch.pools.append(self._own_block.connection_pool)

    # ------------------------------------------------------------------ plumbing
    @property
    def cfg(self) -> Config:
        return self.ctx.config

    def progress(self, name: str) -> None:
        try:
            self.ctx.progress(name)
        except Exception:
            pass

    def _block_client(self, need: int) -> redis.Redis:
        """The context's blocking client, or our own if its pool is too small for our agents."""
        block = self.ctx.clients.block
        have = getattr(block.connection_pool, "max_connections", 0) or 0
        if have >= need:
            return block
        self.log.info("blocking pool too small for the agents; using a dedicated one",
                      have=have, need=need)
        pool = make_pool(self.ctx.clients.url, max_connections=need, blocking=True,
                         cfg=self.ctx.config, timeout=None)
        self._own_block = redis.Redis(connection_pool=pool)
        return self._own_block

    def services(self) -> dict:
        return {"agents": self.agents.run, "retry-timer": lambda: retry_timer(self),
                "backlog": self.backlog.run, "sweeper": self.sweeper.run,
                "workspaces": lambda: self.links.workspaces.run_sweeps(
                    self.workspace_repos, self.stopping, lambda: self.initial_done)}

    def workspace_repos(self) -> set[str]:
        """The repositories of the agents in worktree mode."""
        return {s.workspace.repo for s in self.specs.values() if s.workspace is not None}

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.greenlet is not None and not w.greenlet.dead]

    # ------------------------------------------------------------------ agents
    def settings_for(self, a: AgentSpec, aid: str, *, adopted: bool = False
                     ) -> AgentSettings | None:
        s = agent_settings.resolve(self.cfg, a, aid, adopted=adopted)
        if s is None and a.cli not in self._unknown_cli_logged:
            self._unknown_cli_logged.add(a.cli)
            self.log.warning("agent CLI not defined in agent_clis; agent not run", agent=a.name,
                             cli=a.cli)
        return s

    def sync(self, *, initial: bool) -> list[str]:
        """Register the configured agents; start added ones, stop removed ones, update the
        settings of the others in place (their next round uses them). A start or reload ends
        the town-wide pause of the config's CLIs (fatal errors: the config may be fixed)."""
        notes = [f"agent CLI {n}: pause ended" for n in
                 self.cli_state.clear_pauses({a.cli for a in self.cfg.expanded_agents()})]
        for n in notes:
            self.log.info(n)
        agents = self.cfg.expanded_agents()
        aids = self.town.register_agents([{"name": a.name, "role": a.role, "cli": a.cli}
                                          for a in agents])
        want: dict[str, AgentSettings] = {}
        for a, aid in zip(agents, aids):
            s = self.settings_for(a, aid)
            if s is not None:
                want[aid] = s
        for aid in list(self.specs):
            if aid not in want and not self.specs[aid].adopted:
                spec = self.specs.pop(aid)
                w = self.workers.get(aid)
                if w is not None:
                    w.stop_requested = True
                    self.agents.wake([w])
                notes.append(f"agent {spec.name} removed: draining then stop")
        added = []
        for aid, s in want.items():
            cur = self.specs.get(aid)
            if cur is None:
                self.specs[aid] = s
                added.append(aid)
                if not initial:
                    notes.append(f"agent {s.name} added")
            else:
                changed = cur.update_from(s)
                if not initial:
                    notes += [f"agent {s.name}: {f} updated (next round)" for f in changed]
        for aid in added:
            self.start_worker(aid)
        return notes

    def start_worker(self, aid: str) -> bool:
        spec = self.specs.get(aid)
        if spec is None or self.stopping.is_set():
            return False
        w = self.workers.get(aid)
        if w is not None and w.greenlet is not None and not w.greenlet.dead:
            return True
        if self.watch is not None and self.watch.holding():
            return False        # just after a failover: owners re-assert their leases first
        if not self.leases.acquire(aid):
            self.log.info("agent owned by another daemon; not started", agent=spec.name,
                          owner=self.leases.holder(aid))
            return False
        w = Worker(self.links, spec)
        prev = self.workers.get(aid)
        if prev is not None and time.monotonic() - prev.started_at < QUICK_CRASH_S:
            w.crashes = prev.crashes
        self.workers[aid] = w
        w.greenlet = self.pool.spawn(w.run)
        w.greenlet.link_exception(lambda g, w=w: self._worker_crashed(w, g))
        return True

    def _worker_crashed(self, w: Worker, g) -> None:
        if isinstance(g.exception, redis.exceptions.NoScriptError):
            try:
                self.scripts.reload()   # Redis lost its script cache (restart)
            except redis.RedisError:
                pass
        w.crashes += 1
        if not isinstance(g.exception, (redis.ConnectionError, redis.TimeoutError, OSError)) \
                and refusal(g.exception) is None:
            # not Redis being away: count it against the round in flight (worker._bury_inflight)
            try:
                p = self.r.pipeline(transaction=False)
                p.hincrby(self.keys.agent_info(w.aid), "crashes", 1)
                p.hset(self.keys.agent_info(w.aid), "crash_error", repr(g.exception)[:1000])
                p.execute()
            except redis.RedisError:
                pass
        delay = min(2 ** w.crashes * 0.5, CRASH_BACKOFF_MAX_S)
        self.restart_at[w.aid] = time.monotonic() + delay
        self.log.error("agent worker crashed; restarting", agent=w.settings.name,
                       error=repr(g.exception), restart_in_s=delay)

    def primary_changed(self) -> None:
        """A new primary: hand back the kept script connections (a former primary's are
        closed), renew every held agent lease now (a lost one is taken back; one another
        daemon holds stops that agent at once), and have every worker start over from what the
        new primary holds once its round has ended (worker.Resync): parked ones are woken."""
        self.scripts.close()
        for w in self.workers.values():
            w.resync = True
        self.agents.guarded(self.agents.beat)
        self.agents.wake(self.alive())

    # ------------------------------------------------------------------ component API
    def reload(self, old: Config, new: Config) -> list[str]:
        self.leases.ttl_s = new.runtime.lease_ttl_s
        self.town.task_events = new.runtime.task_events
        return self.agents.guarded(lambda: self.sync(initial=False))

    def drain(self, deadline: float) -> None:
        for w in self.workers.values():
            w.stop_requested = True
        self.agents.wake(self.alive())
        while self.alive() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for w in self.alive():
            w.kill_now = True
        self.pool.join(timeout=10)
        self.pool.kill(timeout=5)

    def close(self) -> None:
        for w in list(self.workers.values()):
            if w.greenlet is not None and not w.greenlet.dead:
                w.stop_requested = True
                w.kill_now = True
        self.agents.wake(self.alive())
        self.pool.join(timeout=5)
        self.pool.kill(timeout=5)
        self.leases.release_all(self.specs)
        self.scripts.close()
        self.lifeline.close()
        gc_tuning.release()
        if self._own_block is not None:
            try:
                self._own_block.connection_pool.disconnect()
            except Exception:
                pass

    def status(self) -> dict:
        """From the runtime's own state (agents, running, pids), plus what Redis says (agent
        state, counters, queue lengths). The Redis read is bounded (STATUS_REDIS_TIMEOUT_S), at
        most one runs at a time, and it is waited for STATUS_WAIT_S at most: past that, the last
        values read are used, with `redis_stale: true` and their age."""
        STATUS_WAIT_S, STATUS_REDIS_TIMEOUT_S = 0.3, 5.0
        cache = self.__dict__.setdefault("_status_redis", {"at": None, "agents": {}, "totals": {},
                                                           "error": None, "g": None})
        k = self.keys
        ws = list(self.workers.values())
        cli_names = sorted({w.settings.cli for w in ws})

        def read():
            try:
                with gevent.Timeout(STATUS_REDIS_TIMEOUT_S):
                    p = self.r.pipeline(transaction=False)
                    for w in ws:
                        p.llen(k.inbox(w.aid))
                        p.llen(k.urgent(w.aid))
                        p.llen(k.inflight(w.aid))
                        p.llen(k.inflight_urgent(w.aid))
                        p.hmget(k.agent(w.aid), "state", "current_task", "rounds_completed",
                                "tasks_completed")
                        p.hmget(k.agent_info(w.aid), *USAGE_SHOWN)
                    for name in cli_names:
                        p.hgetall(k.cli(name))
                    p.llen(k.backlog)
                    p.llen(k.deadletter)
                    p.zcard(k.delayed)
                    res = p.execute()
            except gevent.Timeout:
                cache["error"] = f"no answer from Redis within {STATUS_REDIS_TIMEOUT_S}s"
                return
            except redis.RedisError as e:
                cache["error"] = str(e)
                return
            agents = {}
            for i, w in enumerate(ws):
                inbox, urgent, inf, infu, (state, cur, rounds, done), used = res[6 * i:6 * i + 6]
                agents[w.aid] = {"state": state, "current_task": cur,
                                 "rounds_completed": int(rounds or 0),
                                 "tasks_completed": int(done or 0),
                                 "queue": {"inbox": inbox, "urgent": urgent,
                                           "inflight": inf + infu},
                                 "usage": usage_view(dict(zip(USAGE_SHOWN, used)))}
            clis = {name: describe(name, h or {})
                    for name, h in zip(cli_names, res[6 * len(ws):6 * len(ws) + len(cli_names)])}
            backlog, dead, delayed = res[-3:]
            cache.update(at=time.monotonic(), agents=agents, error=None, clis=clis,
                         totals={"backlog": backlog, "deadletter": dead, "delayed": delayed})

        t0 = time.monotonic()
        g = cache["g"]
        if g is None or g.dead:
            g = cache["g"] = gevent.spawn(read)
        g.join(timeout=STATUS_WAIT_S)
        fresh = cache["at"] is not None and cache["at"] >= t0 and g.dead
        agents = []
        for w in ws:
            got = cache["agents"].get(w.aid) or {
                "state": None, "current_task": None, "rounds_completed": None,
                "tasks_completed": None, "queue": {"inbox": None, "urgent": None, "inflight": None}}
            agents.append({"name": w.settings.name, "id": w.aid, "role": w.settings.role,
                           "cli": w.settings.cli, "running": bool(
                               w.greenlet is not None and not w.greenlet.dead),
                           "pid": w.pid, "problem": w.problem, "cli_wait": w.cli_wait, **got})

        def total(q):
            vals = [a["queue"][q] for a in agents if a["queue"][q] is not None]
            return sum(vals) if vals or not agents else None
        out = {"agents": agents, "agents_running": len(self.alive()),
               **({"wait": self.durability.status()} if self.durability else {}),
               "clis": {n: c for n, c in cache.get("clis", {}).items() if len(c) > 1},
               "queues": {"backlog": cache["totals"].get("backlog"),
                          "deadletter": cache["totals"].get("deadletter"),
                          "delayed": cache["totals"].get("delayed"),
                          "inbox": total("inbox"), "urgent": total("urgent"),
                          "inflight": total("inflight")}}
        if not fresh:
            out["redis_stale"] = True
            out["redis_age_s"] = (round(time.monotonic() - cache["at"], 3)
                                  if cache["at"] is not None else None)
            out["redis_error"] = cache["error"] or \
                f"Redis did not answer within {STATUS_WAIT_S}s"
        return out
