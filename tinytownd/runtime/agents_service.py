"""The `agents` service: registration, heartbeats, (re)starting agents, adopting, waking.

Once per heartbeat interval, ONE pass over every running agent (also while CLIs run): HSET
last_heartbeat, the lease renewal, and a probe of the stop flag, the state and the urgent list,
pipelined. The probe's answer goes through the agent-control rule (store/agent_control.py
`reaction`): kill a running CLI, or wake a parked agent with a ping. About once a second it also
starts configured agents that are not running (lease free, or held by a dead daemon of this host)
and, with `adopt: true`, runs `starting` agents that tt registered and nobody runs.
"""
from __future__ import annotations

import time

import gevent
import redis

from tinytownd.config import AgentSpec
from tinytownd.store import agent_control, quarantine
from tinytownd.store.raw_pipe import raw_pipeline
from tinytownd.store.refusals import transient
from tinytownd.store.wire import AGENT_TERMINAL, hash_ts

from .gc_tuning import Settler

BEAT_CHUNK = 100           # agents per heartbeat pipeline (see AgentsService.beat)
BEAT_GAP_S = 0.02          # pause between two heartbeat pipelines ...
BEAT_SPREAD = 0.25         # ... so that one pass takes at most this share of the interval
SETTLE_POLL_S = 0.5        # pass interval until the start-up objects are frozen (gc_tuning.py),
SETTLE_WITHIN_S = 60.0     # for at most this long after the service starts


def beat_interval(cfg) -> float:
    """Seconds between two heartbeat passes (leases are renewed three times per ttl)."""
    return min(cfg.runtime.heartbeat_interval_s, cfg.runtime.lease_ttl_s / 3)


def beat_gap(agents: int, interval_s: float) -> float:
    """Seconds between two heartbeat pipelines of one pass: BEAT_GAP_S, less when the pass
    would otherwise take more than BEAT_SPREAD of the interval."""
    chunks = (agents + BEAT_CHUNK - 1) // BEAT_CHUNK
    if chunks <= 1:
        return 0.0
    return min(BEAT_GAP_S, interval_s * BEAT_SPREAD / (chunks - 1))


class AgentsService:
    def __init__(self, rt):
        self.rt = rt
        self.settler = Settler(rt.log)
        self.wrongtype_races = quarantine.Races()

    def run(self) -> None:
        rt = self.rt
        next_ensure = 0.0
        pause = 0.0
        t_start = time.monotonic()
        while not rt.stopping.is_set():
            interval = beat_interval(rt.cfg)
            try:
                if not rt.initial_done:
                    self.guarded(lambda: rt.sync(initial=True))
                    rt.initial_done = True
                self.guarded(self.beat)
                now = time.monotonic()
                if now >= next_ensure:
                    self.guarded(self.ensure)
                    next_ensure = now + max(interval, 1.0)
                self.settler.poll(rt.alive())
                if self.settler.count is None and time.monotonic() - t_start < SETTLE_WITHIN_S:
                    interval = min(interval, SETTLE_POLL_S)   # start-up: settle soon after it
                pause = 0.0
            except redis.RedisError as e:
                if not transient(e):
                    raise
                pause = rt.patience.failed(e, pause)
                interval = min(interval, pause)
            rt.progress("agents")
            rt.stopping.wait(interval)

    def guarded(self, fn):
        """Run `fn`; a key of the wrong type among the agents' records (a client wrote one) is
        moved to the dead-letter list and `fn` runs again, instead of failing every pass."""
        for _ in range(3):
            try:
                return fn()
            except redis.ResponseError as e:
                if not quarantine.is_wrongtype(e) or not self.wrongtype_races.tolerate(
                        self._quarantine()):
                    raise
        return fn()

    def _quarantine(self) -> bool:
        rt, k = self.rt, self.rt.keys
        expected = {k.agent_names: "hash"}
        for aid in list(rt.specs):
            expected.update({k.agent(aid): "hash", k.agent_info(aid): "hash",
                             k.agent_lease(aid): "string"})
        for key in rt.r.scan_iter(match=k.pattern("agent"), count=1000):
            expected[key] = "hash"
        return bool(quarantine.quarantine(rt.town, expected, log=rt.log))

    # ------------------------------------------------------------------ waking
    def wake(self, workers) -> None:
        """Unpark idle agents: a ping at the head of each inbox ends their BLMOVE at once."""
        ws = [w for w in workers if w.idle and not w.woken]
        if not ws:
            return
        rt = self.rt
        p = rt.r.pipeline(transaction=False)
        for w in ws:
            w.woken = True
        rt.town.wake_parked([w.aid for w in ws], p)
        try:
            p.execute()
        except redis.RedisError as e:
            rt.log.warning("could not wake agents", error=str(e))

    # ------------------------------------------------------------------ heartbeats
    def beat(self) -> None:
        """One raw pipeline per BEAT_CHUNK agents, spread over up to BEAT_SPREAD of the
        interval: with 1,000 agents one redis-py pipeline was ~40 ms of packing and parsing
        during which nothing else ran, and ten chunks back to back still delayed a pickup by
        several chunks (each of its Redis round trips waited behind one). With a gap between
        chunks a pickup waits behind one chunk at most, and a raw chunk of 100 agents costs
        ~1.3 ms of CPU where redis-py's cost ~8 ms (store/raw_pipe.py)."""
        ws = self.rt.alive()
        gap = beat_gap(len(ws), beat_interval(self.rt.cfg))
        for i in range(0, len(ws), BEAT_CHUNK):
            if i:
                gevent.sleep(gap)
            self._beat_some(ws[i:i + BEAT_CHUNK])

    def _beat_some(self, ws) -> None:
        if not ws:
            return
        rt = self.rt
        k = rt.keys
        now = hash_ts()
        cmds = []
        pids = [w.pid for w in ws]          # fixed now: w.pid changes while the pipeline runs
        for w, pid in zip(ws, pids):
            cmds.append(rt.town.beat_command(w.aid, now))
            if pid:
                cmds.append(("HSET", k.agent_info(w.aid), "pid", pid))
            cmds += (rt.leases.renew_command(w.aid), ("EXISTS", k.stop(w.aid)),
                     ("HGET", k.agent(w.aid), "state"), ("LLEN", k.urgent(w.aid)))
        res = raw_pipeline(rt.r, cmds)      # (redis-py's Pipeline: 6x the CPU per command)
        failed = next((x for x in res if isinstance(x, redis.RedisError) and transient(x)), None)
        if failed is not None:
            raise failed            # the run loop waits it out
        if any(isinstance(x, redis.exceptions.NoScriptError) for x in res):
            rt.scripts.reload()
        wake = []
        j = 0
        for w, pid in zip(ws, pids):
            j += 2 if pid else 1
            renewed, stop, state, urgent = res[j:j + 4]
            j += 4
            if isinstance(renewed, int) and renewed == 0 and not w.lost:
                w.lost = True
                rt.log.warning("lease lost: another daemon holds it now; stopping the agent",
                               agent=w.settings.name, holder=rt.leases.holder(w.aid))
            elif renewed == 2:
                rt.log.warning("lease was gone (Redis lost its data?); taken back",
                               agent=w.settings.name)
            act = agent_control.reaction(running_cli=w.running_cli(), parked=w.idle,
                                         stop_flag=stop == 1, state=state,
                                         urgent=urgent if isinstance(urgent, int) else 0,
                                         leaving=w.stop_requested)
            if act == "kill":
                w.kill_now = True
            elif act == "wake":
                wake.append(w)
        self.wake(wake)

    # ------------------------------------------------------------------ (re)starting
    def ensure(self) -> None:
        """Start desired agents that are not running (unless stopped on purpose); adopt."""
        rt = self.rt
        if rt.stopping.is_set():
            return
        if rt.cfg.adopt:
            self.adopt()
        down = [aid for aid in rt.specs
                if aid not in rt.workers or rt.workers[aid].greenlet is None
                or rt.workers[aid].greenlet.dead]
        if not down:
            return
        p = rt.r.pipeline(transaction=False)
        for aid in down:
            p.hget(rt.keys.agent(aid), "state")
        states = p.execute()
        now = time.monotonic()
        for aid, state in zip(down, states):
            w = rt.workers.get(aid)
            crashed = w is not None and w.greenlet is not None and \
                w.greenlet.exception is not None
            if crashed:
                if now < rt.restart_at.get(aid, 0):
                    continue
            elif state in AGENT_TERMINAL or state is None:
                continue   # stopped by kill/close/idle timeout/recovery: stays stopped
            rt.start_worker(aid)

    def adopt(self) -> None:
        rt = self.rt
        clis = rt.cfg.clis()
        try:
            agents = rt.town.list_agents()
        except redis.RedisError:
            return
        cands = [a for a in agents if a.get("state") == "starting" and a["id"] not in rt.specs]
        if not cands:
            return
        p = rt.r.pipeline(transaction=False)
        for a in cands:
            p.exists(rt.keys.agent_lease(a["id"]))
        for a, leased in zip(cands, p.execute()):
            if leased:
                continue
            name = a.get("cli") or "claude"
            if name not in clis:
                if name not in rt._unknown_cli_logged:
                    rt._unknown_cli_logged.add(name)
                    rt.log.warning("cannot adopt agent: CLI not in agent_clis",
                                   agent=a.get("name"), cli=name)
                continue
            spec = AgentSpec(name=a.get("name") or a["id"][:8], role=a.get("role_id") or "worker",
                             cli=name)
            s = rt.settings_for(spec, a["id"], adopted=True)
            if s is not None:
                rt.specs[a["id"]] = s
                rt.log.info("adopting agent registered by tt", agent=s.name)
                rt.start_worker(a["id"])
