"""The town runtime component: runs the town's agents inside the daemon.

`TownRuntime(ctx)` (loaded by the daemon as `tinytownd.runtime:TownRuntime`) registers the agents
of the config (`agents`, `agent_clis`, `count`, `adopt`), holds a renewable lease per agent it runs,
and runs one worker greenlet per agent (worker.py) in a gevent Pool. Its services (run and
restarted by the daemon's supervisor):

  agents       registration at start; ONE heartbeat pass per heartbeat interval for all running
               agents (HSET last_heartbeat + lease renewal + stop/state probe, one pipeline, also
               while CLIs run); starts agents that are not running (lease free, or held by a dead
               daemon of this host); adopts `starting` agents tt registered when `adopt: true`.
  retry-timer  moves due retry envelopes from the delayed zset back to their queues (Lua).
  backlog      idle agents claim fitting backlog tasks atomically (Lua, LREM arbitration); woken by
               PUBLISH on keys.notify (backlog_add), by agents going idle, and by a cheap LLEN poll
               (tt's `backlog add` does not notify).
  sweeper      recovery.py: agents of dead daemons (stale heartbeat AND no lease) → stopped, their
               queues moved to a live agent of the same role or the backlog.
"""
from __future__ import annotations

import os
import random
import sys
import time

import gevent
import gevent.event
import redis
from gevent.pool import Pool

from tinytownd.store import records
from tinytownd.daemon.component import Component, Context
from tinytownd.config import AgentSpec, Config
from tinytownd.store.leases import Leases, owner_token
from tinytownd.logs import get_logger
from tinytownd.runtime.recovery import Sweeper
from tinytownd.daemon.redis_clients import make_pool
from tinytownd.store.scripts import KEEP, Scripts
from tinytownd.store.town import Town
from tinytownd.store.wire import AGENT_TERMINAL, hash_ts, new_id
from tinytownd.runtime.worker import AgentRun, Worker

CLAIM_SCAN = 100            # backlog entries one claim looks at
CRASH_BACKOFF_MAX_S = 30.0
BEAT_CHUNK = 100           # agents per heartbeat pipeline (see TownRuntime._beat)
_ENV_DROP = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
             "WATCHDOG_PID", "TINYTOWN_TASK_ID", "TINYTOWN_PROMPT_FILE")


def blocking_connections(cfg: Config) -> int:
    """Size of the blocking pool (one definition, on Config)."""
    return cfg.blocking_connections


class TownRuntime(Component):
    name = "runtime"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.keys = ctx.keys
        self.log = get_logger("runtime", town=ctx.keys.town)
        self.r: redis.Redis = ctx.clients.cmd
        self._own_block = None
        self.block = self._block_client(blocking_connections(ctx.config))
        # kept connections (see scripts.py), at most 1 per 16 of the pool's
        pool_max = getattr(self.r.connection_pool, "max_connections", 0) or 0
        self.scripts = Scripts(self.r, keep=min(KEEP, pool_max // 16))
        self.town = Town(self.r, self.keys, log=get_logger("town", town=ctx.keys.town))
        self.owner = owner_token(ctx.instance_id)
        self.leases = Leases(self.r, self.keys, self.owner, ctx.config.runtime.lease_ttl_s,
                             self.scripts)
        self.stopping = ctx.stopping
        self.pool = Pool()
        self.workers: dict[str, Worker] = {}
        self.specs: dict[str, AgentRun] = {}
        self.spawn_hooks: list = []
        self._initial_done = False
        self._wake_backlog = gevent.event.Event()
        self.backlog_waiting = True    # the backlog may hold tasks (agents going idle wake claims)
        self._unknown_cli_logged: set[str] = set()
        self._restart_at: dict[str, float] = {}
        self._env_cache: dict[str, tuple] = {}
        self.sweeper = Sweeper(self)
        ctx.extra["town"] = self.town
        ctx.extra["runtime"] = self

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
        return {"agents": self._agents_service, "retry-timer": self._timer_service,
                "backlog": self._backlog_service, "sweeper": self.sweeper.run}

    def on_spawn(self, worker: Worker, tid: str | None, pid: int) -> None:
        """Right after a CLI started (its pid reaches agent_info with the next heartbeat)."""
        for hook in self.spawn_hooks:
            hook(worker, tid, pid)

    def cli_env(self, spec: AgentRun, prompt_path: str) -> dict:
        """The CLI's environment minus TINYTOWN_TASK_ID (the runner exports that one in the
        shell line). It is the same round after round, so it is built once per agent and the
        *same dict* is returned while os.environ, the spec's env, the prompt path, the config
        path and the Redis URL stay the same (a C-level dict compare per round); the spawner
        keeps its encoded form by identity. Callers must not modify it."""
        src = os.environ._data   # type: ignore[attr-defined]  (bytes → bytes, no decoding)
        sig = (spec.env, prompt_path, self.cfg.path, self.ctx.clients.url, spec.aid, spec.name,
               self.keys.town)
        c = self._env_cache.get(spec.aid)
        if c is None or c[0] != src or c[1] != sig:
            c = (dict(src), sig, self._cli_env(spec, prompt_path))
            self._env_cache[spec.aid] = c
        return c[2]

    def _cli_env(self, spec: AgentRun, prompt_path: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env.update(spec.env)
        env.update(TINYTOWN_AGENT_ID=spec.aid, TINYTOWN_AGENT_NAME=spec.name,
                   TINYTOWN_TOWN=self.keys.town, REDIS_URL=self.ctx.clients.url,
                   TINYTOWN_PROMPT_FILE=prompt_path)
        bindir = os.path.dirname(sys.executable)
        if os.path.exists(os.path.join(bindir, "tinytownd")) and \
                bindir not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        path = self.cfg.path
        if path and not path.startswith("<"):
            env["TINYTOWND_CONFIG"] = os.path.abspath(path)
        return env

    # ------------------------------------------------------------------ agent specs
    def _make_run(self, a: AgentSpec, aid: str, *, adopted: bool = False) -> AgentRun | None:
        cfg = self.cfg
        cli = cfg.clis().get(a.cli)
        if cli is None:
            if a.cli not in self._unknown_cli_logged:
                self._unknown_cli_logged.add(a.cli)
                self.log.warning("agent CLI not defined in agent_clis; agent not run",
                                 agent=a.name, cli=a.cli)
            return None
        workdir = cfg.resolve(a.workdir or cli.workdir) or cfg.root
        env = {str(k): str(v) for k, v in {**cli.env, **a.env}.items()}
        return AgentRun(name=a.name, aid=aid, role=a.role or "worker", cli=a.cli,
                        command=cli.command, timeout_s=cli.timeout_s,
                        max_attempts=cli.max_attempts, workdir=str(workdir), env=env,
                        tags=[str(t) for t in a.tags], adopted=adopted)

    def _sync(self, *, initial: bool) -> list[str]:
        """Register the configured agents; start added ones, stop removed ones."""
        notes = []
        agents = self.cfg.expanded_agents()
        aids = self.town.register_agents([{"name": a.name, "role": a.role, "cli": a.cli}
                                          for a in agents])
        want: dict[str, AgentRun] = {}
        for a, aid in zip(agents, aids):
            run = self._make_run(a, aid)
            if run is not None:
                want[aid] = run
        for aid in list(self.specs):
            if aid not in want and not self.specs[aid].adopted:
                spec = self.specs.pop(aid)
                w = self.workers.get(aid)
                if w is not None:
                    w.stop_requested = True
                    self.wake([w])
                notes.append(f"agent {spec.name} removed: draining then stop")
        added = []
        for aid, run in want.items():
            cur = self.specs.get(aid)
            if cur is None:
                self.specs[aid] = run
                added.append(aid)
                if not initial:
                    notes.append(f"agent {run.name} added")
            else:  # in place: the worker reads its spec every round
                for f in ("role", "cli", "command", "timeout_s", "max_attempts", "workdir", "env",
                          "tags"):
                    if getattr(cur, f) != getattr(run, f):
                        setattr(cur, f, getattr(run, f))
                        if not initial:
                            notes.append(f"agent {run.name}: {f} updated (next round)")
                cur.adopted = False
        for aid in added:
            self._start_worker(aid)
        return notes

    def _start_worker(self, aid: str) -> bool:
        spec = self.specs.get(aid)
        if spec is None or self.stopping.is_set():
            return False
        w = self.workers.get(aid)
        if w is not None and w.greenlet is not None and not w.greenlet.dead:
            return True
        if not self.leases.acquire(aid):
            self.log.info("agent owned by another daemon; not started", agent=spec.name,
                          owner=self.leases.holder(aid))
            return False
        w = Worker(self, spec)
        prev = self.workers.get(aid)
        if prev is not None and time.monotonic() - prev.started_at < 60:
            w.crashes = prev.crashes   # crash backoff grows only for workers that die quickly
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
        delay = min(2 ** w.crashes * 0.5, CRASH_BACKOFF_MAX_S)
        self._restart_at[w.aid] = time.monotonic() + delay
        self.log.error("agent worker crashed; restarting", agent=w.spec.name,
                       error=repr(g.exception), restart_in_s=delay)

    # ------------------------------------------------------------------ services
    def _agents_service(self) -> None:
        if not self._initial_done:
            self._sync(initial=True)
            self._initial_done = True
        rt = self.cfg.runtime
        next_ensure = 0.0
        while not self.stopping.is_set():
            interval = min(rt.heartbeat_interval_s, self.cfg.runtime.lease_ttl_s / 3)
            self._beat()
            now = time.monotonic()
            if now >= next_ensure:
                self._ensure()
                next_ensure = now + max(interval, 1.0)
            self.progress("agents")
            self.stopping.wait(interval)

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.greenlet is not None and not w.greenlet.dead]

    @property
    def idle_block_s(self) -> float:
        """BLMOVE timeout of a parked idle agent (woken early by `wake`)."""
        rt = self.cfg.runtime
        return max(rt.block_timeout_s, min(rt.heartbeat_interval_s, rt.lease_ttl_s / 3))

    def wake(self, workers: list[Worker]) -> None:
        """Unpark idle agents: a `ping` (informational for tt, consumed by the next round) at the
        head of each inbox ends their BLMOVE at once."""
        ws = [w for w in workers if w.idle and not w.woken]
        if not ws:
            return
        p = self.r.pipeline(transaction=False)
        for w in ws:
            w.woken = True
            p.lpush(self.keys.inbox(w.aid), records.encode_message(records.make_message(
                w.aid, "ping")))
        try:
            p.execute()
        except redis.RedisError as e:
            self.log.warning("could not wake agents", error=str(e))

    def _beat(self) -> None:
        """Heartbeat, lease renewal and a stop/state/urgent probe for every running agent, one
        pipeline per BEAT_CHUNK agents with a yield between them: with 1,000 agents one pipeline
        was ~40 ms of packing and parsing during which nothing else ran (the pickup p99 of the
        1,000-agent benchmark). Parked agents that have something to notice are woken."""
        ws = self._alive()
        for i in range(0, len(ws), BEAT_CHUNK):
            if i:
                gevent.sleep(0)
            self._beat_some(ws[i:i + BEAT_CHUNK])

    def _beat_some(self, ws: list[Worker]) -> None:
        if not ws:
            return
        k = self.keys
        now = hash_ts()
        p = self.r.pipeline(transaction=False)
        pids = [w.pid for w in ws]          # fixed now: w.pid changes while the pipeline runs
        for w, pid in zip(ws, pids):
            p.hset(k.agent(w.aid), "last_heartbeat", now)
            if pid:
                p.hset(k.agent_info(w.aid), "pid", pid)
            self.leases.renew_many([w.aid], pipe=p)
            p.exists(k.stop(w.aid))
            p.hget(k.agent(w.aid), "state")
            p.llen(k.urgent(w.aid))
        try:
            res = p.execute(raise_on_error=False)
        except redis.RedisError as e:
            self.log.warning("heartbeat failed", error=str(e))
            return
        if any(isinstance(x, redis.exceptions.NoScriptError) for x in res):
            self.scripts.reload()
        wake = []
        j = 0
        for w, pid in zip(ws, pids):
            j += 2 if pid else 1
            renewed, stop, state, urgent = res[j:j + 4]
            j += 4
            if isinstance(renewed, int) and renewed == 0 and not w.lost:
                w.lost = True
                self.log.warning("lease lost; stopping agent", agent=w.spec.name)
            if w.running_cli() and stop == 1 and state == "stopped":
                w.kill_now = True   # `kill`: stop the running CLI now
            if w.idle and (stop == 1 or state in ("paused", "stopped", "draining") or
                           (isinstance(urgent, int) and urgent > 0) or w.stop_requested):
                wake.append(w)
        self.wake(wake)

    def _ensure(self) -> None:
        """Start desired agents that are not running (unless stopped on purpose); adopt."""
        if self.stopping.is_set():
            return
        if self.cfg.adopt:
            self._adopt()
        idle = [aid for aid in self.specs
                if aid not in self.workers or self.workers[aid].greenlet is None
                or self.workers[aid].greenlet.dead]
        if not idle:
            return
        p = self.r.pipeline(transaction=False)
        for aid in idle:
            p.hget(self.keys.agent(aid), "state")
        states = p.execute()
        now = time.monotonic()
        for aid, state in zip(idle, states):
            w = self.workers.get(aid)
            crashed = w is not None and w.greenlet is not None and \
                w.greenlet.exception is not None
            if crashed:
                if now < self._restart_at.get(aid, 0):
                    continue
            elif state in AGENT_TERMINAL or state is None:
                continue   # stopped by kill/close/idle timeout/recovery: stays stopped
            self._start_worker(aid)

    def _adopt(self) -> None:
        clis = self.cfg.clis()
        try:
            agents = self.town.list_agents()
        except redis.RedisError:
            return
        cands = [a for a in agents if a.get("state") == "starting" and a["id"] not in self.specs]
        if not cands:
            return
        p = self.r.pipeline(transaction=False)
        for a in cands:
            p.exists(self.keys.agent_lease(a["id"]))
        for a, leased in zip(cands, p.execute()):
            if leased:
                continue
            name = a.get("cli") or "claude"
            if name not in clis:
                if name not in self._unknown_cli_logged:
                    self._unknown_cli_logged.add(name)
                    self.log.warning("cannot adopt agent: CLI not in agent_clis",
                                     agent=a.get("name"), cli=name)
                continue
            spec = AgentSpec(name=a.get("name") or a["id"][:8], role=a.get("role_id") or "worker",
                             cli=name)
            run = self._make_run(spec, a["id"], adopted=True)
            if run is not None:
                self.specs[a["id"]] = run
                self.log.info("adopting agent registered by tt", agent=run.name)
                self._start_worker(a["id"])

    def _timer_service(self) -> None:
        k = self.keys
        while not self.stopping.is_set():
            now = time.time()
            try:
                n = int(self.scripts.move_due(keys=[k.delayed, k.deadletter],
                                              args=[int(now * 1000), 100,
                                                    hash_ts().replace("+00:00", "Z")]))
            except redis.RedisError as e:
                self.log.warning("retry timer failed", error=str(e))
                n = 0
            self.progress("retry-timer")
            if n < 100:
                self.stopping.wait(0.2)

    def wake_backlog(self) -> None:
        self._wake_backlog.set()

    def _backlog_service(self) -> None:
        if not self.cfg.runtime.backlog_claim:
            self.stopping.wait()
            return
        k = self.keys
        ps = self.block.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(k.notify)

        def listen():
            while not self.stopping.is_set():
                try:
                    m = ps.get_message(timeout=1.0)
                except (redis.RedisError, OSError, ValueError):
                    self.stopping.wait(1.0)
                    continue
                if m and m.get("type") == "message" and '"backlog"' in (m.get("data") or ""):
                    self.backlog_waiting = True
                    self._wake_backlog.set()

        listener = gevent.spawn(listen)
        last_len = -1
        last_try = 0.0
        try:
            while not self.stopping.is_set():
                self._wake_backlog.wait(timeout=max(0.2, self.cfg.runtime.block_timeout_s))
                woken = self._wake_backlog.is_set()
                self._wake_backlog.clear()
                n = self.r.llen(k.backlog)
                now = time.monotonic()
                if n and (woken or n != last_len or now - last_try > 5.0):
                    last_try = now
                    self.claim_for_idle()
                    n = self.r.llen(k.backlog)
                last_len = n
                self.backlog_waiting = bool(n)
                self.progress("backlog")
        finally:
            listener.kill(block=False)
            try:
                ps.close()
            except Exception:
                pass

    def claim_for_idle(self) -> int:
        """Give fitting backlog tasks to idle local agents (one each). Returns claims made."""
        k = self.keys
        idle = [w for w in self._alive() if w.idle and not w.lost and not w.stop_requested]
        random.shuffle(idle)
        claimed = 0
        for w in idle:
            now = hash_ts()
            words = [w.spec.role, f"role:{w.spec.role}", w.spec.name, *w.spec.tags]
            tid = self.scripts.claim_backlog(
                keys=[k.backlog], args=[k.p, w.aid, now, new_id(), now.replace("+00:00", "Z"),
                                        CLAIM_SCAN, *words])
            if tid:
                claimed += 1
                w.idle = False
                self.town.emit("task_assigned", f"Task {tid} claimed from the backlog",
                               agent_id=w.aid, task_id=tid)
                self.log.info("backlog task claimed", agent=w.spec.name, task=tid)
                if not self.r.llen(k.backlog):
                    break
        return claimed

    # ------------------------------------------------------------------ component API
    def reload(self, old: Config, new: Config) -> list[str]:
        self.leases.ttl_ms = max(100, int(new.runtime.lease_ttl_s * 1000))
        return self._sync(initial=False)

    def drain(self, deadline: float) -> None:
        for w in self.workers.values():
            w.stop_requested = True
        self.wake(self._alive())
        while self._alive() and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for w in self._alive():
            w.kill_now = True
        self.pool.join(timeout=10)
        self.pool.kill(timeout=5)

    def close(self) -> None:
        for w in list(self.workers.values()):
            if w.greenlet is not None and not w.greenlet.dead:
                w.stop_requested = True
                w.kill_now = True
        self.wake(self._alive())
        self.pool.join(timeout=5)
        self.pool.kill(timeout=5)
        for aid in list(self.specs):
            try:
                self.leases.release(aid)
            except redis.RedisError:
                pass
        self.scripts.close()
        if self._own_block is not None:
            try:
                self._own_block.connection_pool.disconnect()
            except Exception:
                pass

    def status(self) -> dict:
        k = self.keys
        ws = list(self.workers.values())
        try:
            p = self.r.pipeline(transaction=False)
            for w in ws:
                p.llen(k.inbox(w.aid))
                p.llen(k.urgent(w.aid))
                p.llen(k.inflight(w.aid))
                p.llen(k.inflight_urgent(w.aid))
                p.hmget(k.agent(w.aid), "state", "current_task", "rounds_completed",
                        "tasks_completed")
            p.llen(k.backlog)
            p.llen(k.deadletter)
            p.zcard(k.delayed)
            res = p.execute()
        except redis.RedisError as e:
            return {"error": str(e), "agents_running": len(self._alive())}
        agents = []
        for i, w in enumerate(ws):
            inbox, urgent, inf, infu, (state, cur, rounds, done) = res[5 * i:5 * i + 5]
            agents.append({"name": w.spec.name, "id": w.aid, "role": w.spec.role,
                           "cli": w.spec.cli, "state": state, "running": bool(
                               w.greenlet is not None and not w.greenlet.dead),
                           "current_task": cur, "rounds_completed": int(rounds or 0),
                           "tasks_completed": int(done or 0), "pid": w.pid,
                           "queue": {"inbox": inbox, "urgent": urgent, "inflight": inf + infu}})
        backlog, dead, delayed = res[-3:]
        return {"agents": agents, "agents_running": len(self._alive()),
                "queues": {"backlog": backlog, "deadletter": dead, "delayed": delayed,
                           "inbox": sum(a["queue"]["inbox"] for a in agents),
                           "urgent": sum(a["queue"]["urgent"] for a in agents),
                           "inflight": sum(a["queue"]["inflight"] for a in agents)}}
