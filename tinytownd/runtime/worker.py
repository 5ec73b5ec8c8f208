"""One agent's worker loop (a greenlet): take a round at-least-once, run the CLI, ack or retry.

Round protocol (keys in keys.py, scripts in lua/):
  1. take_round (one Lua call): fenced by the agent lease; honours the stop flag and the paused /
     stopped states; moves every urgent message → inflight_urgent and inbox messages → inflight
     until one task-bearing message (task_assign / task) is in flight.
  2. Nothing taken: the agent is idle; BLMOVE inbox → inflight on the blocking pool with a
     server-side timeout, then take again (the moved message counts).
  3. Poison (tt could not read it) → dead-letter entry + LREM from in-flight, atomically (MULTI).
  4. The round: agent `working` + current_task, task `running`, attempts += 1, then the CLI runs
     (runner.py) with the prompt on stdin and in $TINYTOWN_PROMPT_FILE.
  5. Exit 0 → the task is completed with the output tail unless the CLI finished it itself; the
     round is acked (ack_round: LREM each message from in-flight). Failure → retry with exponential
     backoff (envelope parked in the delayed zset *in the same Lua call as the ack*), or, after
     max_attempts, task `failed` + dead-letter entry. Killed (operator kill, lease lost, shutdown)
     → the messages go back to the queue heads (or stay in flight for the new owner).
A crash at any point leaves the messages in flight; the next start of the worker (this daemon or
another one that takes the lease over) moves them back to the queue heads: nothing is lost, and a
duplicate run after a crash is possible.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import gevent
import redis
import structlog

from tinytownd.store import records
from tinytownd.runtime import runner
from tinytownd.store.records import TASK_BEARING, Poison
from tinytownd.store.town import EVENT_MAXLEN_AGENT, EVENT_MAXLEN_MISSION, EVENT_MAXLEN_TOWN, mission_of
from tinytownd.store.wire import TASK_TERMINAL, debug_state, hash_ts, json_ts

MAX_INBOX_PER_ROUND = 100
ROUND_LOGS_KEPT = 50        # per agent: older <name>_round_<n>.log files are deleted


@dataclass
class AgentRun:
    """What the runtime knows about one agent it runs (mutable: reload updates it in place)."""
    name: str
    aid: str
    role: str
    cli: str
    command: str
    timeout_s: float | None
    max_attempts: int
    workdir: str
    env: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    adopted: bool = False


def _write_file(path: str, data: bytes) -> None:
    """Create/truncate `path` with `data` (its directory is made when missing): three syscalls
    instead of open()'s text-file setup."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        runner._close(fd)


def _pairs(flat) -> dict:
    """A flat [field, value, ...] reply (HGETALL inside Lua) as a dict."""
    it = iter(flat or ())
    return dict(zip(it, it))


class Worker:
    def __init__(self, rt, spec: AgentRun):
        self.rt = rt
        self.spec = spec
        self.aid = spec.aid
        self.greenlet: gevent.Greenlet | None = None
        self.state = "starting"
        self.idle = False
        self.stop_requested = False   # finish the current round, then exit (drain / removal)
        self.kill_now = False         # kill the running CLI (operator kill, drain deadline)
        self.lost = False             # the lease is gone: stop at once, touch nothing
        self.woken = False            # a wake-up ping was pushed since the agent parked
        self.pid: int | None = None
        self.current_task: str | None = None
        self.rounds = 0
        self.round_started: float | None = None
        self.crashes = 0
        self.started_at = time.monotonic()
        self.exit_reason = ""
        self._extra_ack: list[tuple[str, str, str, str]] = []
        self._pre = None              # the next round's take_round reply, taken by round_ok_take

    # ------------------------------------------------------------------ helpers
    @property
    def k(self):
        return self.rt.keys

    @property
    def r(self) -> redis.Redis:
        return self.rt.r

    def _qkeys(self):
        k, a = self.k, self.aid
        return [k.urgent(a), k.inbox(a), k.inflight_urgent(a), k.inflight(a)]

    def running_cli(self) -> bool:
        return self.pid is not None

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        with structlog.contextvars.bound_contextvars(agent=self.spec.name, agent_id=self.aid):
            self.log = self.rt.log.bind()
            try:
                self._start()
                self._loop()
            except gevent.GreenletExit:
                self.exit_reason = self.exit_reason or "killed"
                raise
            finally:
                self._finish()

    def _start(self) -> None:
        k, a, s = self.k, self.aid, self.rt.scripts
        p = self.r.pipeline(transaction=False)
        p.delete(k.stop(a))
        s.requeue_inflight(keys=[k.inflight_urgent(a), k.inflight(a), k.urgent(a), k.inbox(a)],
                           client=p)
        p.hset(k.agent_info(a), mapping={"owner": self.rt.owner, "cli": self.spec.cli,
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
            p.hdel(k.agent(a), "current_task")
        # An agent the operator paused stays paused across a daemon restart.
        new = "paused" if old == "paused" else "idle"
        self.rt.town.set_agent_state(a, new, old=old, pipe=p, stamp_active=True)
        p.execute()
        self.state = new
        self.log.info("agent started", previous_state=old)

    def _loop(self) -> None:
        k, a = self.k, self.aid
        rt = self.rt
        take_keys = self._take_keys = self._qkeys() + [k.stop(a), k.agent(a), k.agent_lease(a)]
        idle_since = time.monotonic()
        announced = False
        while True:
            if self.stop_requested or rt.stopping.is_set() or self.lost:
                self._drop_pre()
                self.exit_reason = self.exit_reason or "shutdown"
                return
            if self._pre is not None:     # taken with the end of the last round
                res, self._pre = self._pre, None
            else:
                res = rt.scripts.take_round(keys=take_keys,
                                            args=[rt.owner, MAX_INBOX_PER_ROUND, k.p])
            status = res[0]
            if status == "lost":
                self.lost = True
                self.exit_reason = "lease lost"
                self.log.warning("lease lost; another daemon owns this agent now")
                return
            if status == "stop":
                self.r.delete(k.stop(a))
                self.exit_reason = "stop flag"
                return
            if status == "stopped":
                self.exit_reason = "state stopped"
                return
            if status == "paused":
                self.state = "paused"
                self.idle = False
                rt.stopping.wait(min(1.0, rt.cfg.runtime.block_timeout_s))
                idle_since = time.monotonic()
                continue
            nu = int(res[1])
            items = res[2]
            if not items:
                self.state = "idle"
                it = rt.cfg.runtime.idle_timeout_s
                if it > 0 and time.monotonic() - idle_since >= it:
                    self._idle_timeout()
                    return
                self.idle = True
                self.woken = False
                if not announced:
                    announced = True
                    if rt.backlog_waiting:
                        rt.wake_backlog()
                try:
                    # Idle: park in BLMOVE. The runtime wakes a parked agent early (a `ping`
                    # pushed to its inbox) when it sees a stop flag, a pause, urgent mail or a
                    # shutdown, so the park can be long without delaying those.
                    rt.block.blmove(k.inbox(a), k.inflight(a), rt.idle_block_s, "LEFT", "RIGHT")
                finally:
                    self.idle = False
                continue
            self.idle = False
            announced = False
            self._round(items[:nu], items[nu:], res[3])
            idle_since = time.monotonic()
            rt.progress("agents")

    def _drop_pre(self) -> None:
        """A stop arrived after round_ok_take took the next round: its messages go back to the
        queue heads (as if never taken; the take is fenced, so they are ours to move)."""
        pre, self._pre = self._pre, None
        if pre is None or pre[0] != "ok" or not pre[2] or self.lost:
            return
        k, a = self.k, self.aid
        try:
            self.rt.scripts.requeue_inflight(keys=[k.inflight_urgent(a), k.inflight(a),
                                                   k.urgent(a), k.inbox(a)])
        except redis.RedisError as e:   # they stay in flight: the next start requeues them
            self.log.warning("could not requeue taken messages", error=str(e))

    def _idle_timeout(self) -> None:
        self.log.info("idle timeout: draining")
        self.rt.town.set_agent_state(self.aid, "draining", old="idle")
        self.rt.town.log_activity(self.aid, "⏳ Idle timeout (draining then stop)")
        self.exit_reason = "idle timeout"

    def _finish(self) -> None:
        """Exit bookkeeping: stopped state + event + lease release (unless the lease is gone)."""
        self.idle = False
        self.pid = None
        if self.lost:
            return
        try:
            k, a = self.k, self.aid
            old = self.r.hget(k.agent(a), "state")
            p = self.r.pipeline(transaction=False)
            self.rt.town.set_agent_state(a, "stopped", old=old, pipe=p)
            self.rt.town._emit_into(p, "agent_stopped",
                                    f"Agent {self.spec.name} stopped ({self.exit_reason})",
                                    {"agent_id": a})
            p.hdel(k.agent_info(a), "pid")
            p.execute()
            self.rt.leases.release(a)
            self.state = "stopped"
            self.log.info("agent stopped", reason=self.exit_reason)
        except redis.RedisError as e:
            self.log.warning("could not record agent stop", error=str(e))

    # ------------------------------------------------------------------ one round
    def _round(self, urgent_raw: list[str], inbox_raw: list[str], info=()) -> None:
        """`info`: take_round's reading of the first task-bearing message (its task hash and
        daemon meta); used when it names the task this round runs, else they are read here."""
        rt, k, a = self.rt, self.k, self.aid
        taken = [("u", x) for x in urgent_raw] + [("i", x) for x in inbox_raw]
        good: list[tuple[str, str, dict]] = []
        poison: list[tuple[str, str, str]] = []
        for which, raw in taken:
            try:
                good.append((which, raw, records.decode_message(raw)))
            except Poison as e:
                poison.append((which, raw, e.reason))
        if poison:
            self._deadletter_poison(poison)
        task_msgs = [g for g in good if g[2]["type"] in TASK_BEARING]
        actionable = [g for g in good if records.is_actionable(g[2])]
        # One task per round: further task-bearing messages (several urgent ones) stay in flight
        # and the ack puts them back at the head of their queue for the next round.
        deferred = task_msgs[1:]
        this_round = [g for g in good if g not in deferred]
        task_msg = task_msgs[0] if task_msgs else None
        tid: str | None = None
        task: dict | None = None
        meta: dict = {}
        if task_msg and task_msg[2]["type"] == "task_assign":
            tid = task_msg[2]["task_id"]
            if info and info[0] == "task_assign" and info[1] == tid:
                task, meta = _pairs(info[2]), _pairs(info[3])
            else:
                p = self.r.pipeline(transaction=False)
                p.hgetall(k.task(tid))
                p.hgetall(k.task_meta(tid))
                task, meta = p.execute()
            if not task or "id" not in task:
                rt.town.deadletter("unknown task", k.inbox(a), task_msg[1], task=tid, agent=a)
                self.log.warning("task_assign for a task that does not exist", task=tid)
                self._extra_ack.append((task_msg[0], task_msg[1], "", ""))
                this_round = [g for g in this_round if g is not task_msg]
                actionable = [g for g in actionable if g is not task_msg]
                task_msg, tid, task = None, None, None
            elif records.parse_task(task)["state"] in TASK_TERMINAL:
                self.log.info("task already finished; skipping", task=tid,
                              state=task.get("state"))
                task_msg, tid, task = None, None, None
        if task_msg is None and not [g for g in actionable if g[2]["type"] not in TASK_BEARING]:
            # Nothing to run: non-actionable mail is consumed (as tt does), the rest acked.
            self._ack([(w, raw, "", "") for w, raw, _m in this_round])
            return
        if task_msg is not None and tid is None:   # a `task` message (description only)
            mid = task_msg[2]["id"]
            if info and info[0] == "task" and info[1] == mid:
                meta = _pairs(info[3])
            else:
                meta = self.r.hgetall(k.task_meta(mid))
        with structlog.contextvars.bound_contextvars(task=tid):
            self._run_round(this_round, task_msg, tid, task, meta)

    def _deadletter_poison(self, poison) -> None:
        k, a = self.k, self.aid
        p = self.r.pipeline(transaction=True)
        now = json_ts()
        for which, raw, reason in poison:
            src = k.urgent(a) if which == "u" else k.inbox(a)
            p.rpush(k.deadletter, records.dumps({"id": records.new_id(), "reason": reason,
                                                "source": src, "raw": raw, "at": now,
                                                "agent": a}))
            p.lrem(k.inflight_urgent(a) if which == "u" else k.inflight(a), 1, raw)
        p.execute()
        for _w, _raw, reason in poison:
            self.log.warning("poison message dead-lettered", reason=reason)

    def _ack(self, entries, pipe=None):
        """entries: (which, raw, score, envelope). Fenced by the lease. With `pipe`, only queued
        (the caller checks the reply with _acked)."""
        k, a = self.k, self.aid
        args = [self.rt.owner]
        entries = list(entries) + self._extra_ack
        self._extra_ack = []
        for e in entries:
            args.extend(e)
        res = self.rt.scripts.ack_round(
            keys=[k.inflight_urgent(a), k.inflight(a), k.urgent(a), k.inbox(a), k.agent_lease(a),
                  k.delayed], args=args, client=pipe)
        if pipe is None:
            return self._acked(res)
        return None

    def _acked(self, res) -> bool:
        if not int(res):
            self.lost = True
            self.exit_reason = "lease lost"
        return bool(int(res))

    def _limits(self, meta: dict) -> tuple[int, float | None]:
        spec = self.spec
        try:
            max_attempts = int(meta.get("max_attempts") or spec.max_attempts)
        except ValueError:
            max_attempts = spec.max_attempts
        timeout = spec.timeout_s
        if meta.get("timeout_s"):
            try:
                timeout = float(meta["timeout_s"])
            except ValueError:
                pass
        return max(1, max_attempts), timeout

    def _run_round(self, msgs, task_msg, tid, task, meta) -> None:
        rt, k, a, spec = self.rt, self.k, self.aid, self.spec
        attempts_key = k.task_meta(tid if tid else task_msg[2]["id"]) if task_msg else None
        max_attempts, timeout = self._limits(meta)
        now = hash_ts()
        self.rounds += 1
        rnd = self.rounds
        old_state = self.state if self.state in ("idle", "paused", "starting") else "idle"
        data = records.make_event("agent_state_changed",
                                 f"Agent state {debug_state(old_state)} -> Working",
                                 agent_id=a,
                                 **records.state_change_fields(old_state, "working"))["data"]
        # One call: agent working + current_task, task running, attempts += 1, agent info, event.
        attempt = int(rt.scripts.round_start(
            keys=[k.agent(a), k.agent_info(a), k.task(tid) if tid else k.agent(a),
                  attempts_key or k.agent_info(a), k.events, k.agent_events(a)],
            args=[now, tid or "", "1" if attempts_key else "0", rnd, data, EVENT_MAXLEN_TOWN,
                  EVENT_MAXLEN_AGENT]))
        self.state = "working"
        self.current_task = tid
        prompt = self._prompt(msgs, tid, task, task_msg, attempt, max_attempts)
        logs_dir = rt.cfg.logs_dir_str
        prompt_path = os.path.join(logs_dir, f"{spec.name}_prompt.md")
        log_path = os.path.join(logs_dir, f"{spec.name}_round_{rnd}.log")
        try:
            _write_file(prompt_path, prompt.encode("utf-8"))
        except OSError as e:
            self.log.warning("cannot write prompt file", error=str(e))
        env = rt.cli_env(spec, prompt_path)
        self.round_started = time.monotonic()
        self.log.debug("round started", round=rnd, attempt=attempt, task=tid)

        def on_start(pid):
            self.pid = pid
            rt.on_spawn(self, tid, pid)

        result = runner.run(spec.command, prompt=prompt, env=env, cwd=spec.workdir,
                            exports={"TINYTOWN_TASK_ID": tid} if tid else None,
                            log_path=log_path, timeout_s=timeout,
                            should_stop=lambda: self.kill_now or self.lost, on_start=on_start,
                            tail_bytes=rt.cfg.runtime.result_tail_bytes, keep_empty_log=False)
        self.pid = None
        self.round_started = None
        olds = [prompt_path]
        if rnd > ROUND_LOGS_KEPT:
            olds.append(os.path.join(logs_dir, f"{spec.name}_round_{rnd - ROUND_LOGS_KEPT}.log"))
        for old in olds:
            try:
                os.unlink(old)
            except OSError:
                pass
        self._after_round(msgs, task_msg, tid, attempts_key, attempt, max_attempts, result,
                          log_path, rnd, task)

    def _after_round(self, msgs, task_msg, tid, attempts_key, attempt, max_attempts, result,
                     log_path, rnd, task=None) -> None:
        rt, k, a = self.rt, self.k, self.aid
        out_tail = result.output
        if result.killed or self.lost:
            # Operator kill, drain deadline or lost lease: the work goes back (not an attempt).
            self.log.warning("round interrupted; messages requeued", round=rnd)
            self._extra_ack = []
            if attempts_key:
                self.r.hincrby(attempts_key, "attempts", -1)
            if not self.lost:
                p = self.r.pipeline(transaction=False)
                if tid:
                    p.hset(k.task(tid), mapping={"state": "assigned", "updated_at": hash_ts()})
                rt.scripts.requeue_inflight(keys=[k.inflight_urgent(a), k.inflight(a),
                                                  k.urgent(a), k.inbox(a)], client=p)
                p.execute()
                self._round_end(tid, "🛑 interrupted", result)
            return
        if result.ok:
            self._round_ok(msgs, tid, out_tail or "Completed", result, rnd, task)
            return
        entries = []
        cur_state = self.r.hget(k.task(tid), "state") if tid else None
        if result.timed_out:
            err = f"timed out after {result.duration_s:.1f}s"
        elif result.exit_code is None:
            err = result.error or "could not start the CLI"
        else:
            err = f"exit status {result.exit_code}"
        self.log.warning("round failed", round=rnd, error=err, attempt=attempt,
                         max_attempts=max_attempts)
        if tid and cur_state in TASK_TERMINAL:
            # The CLI finished the task itself (e.g. `task fail`) and then exited non-zero.
            self._ack([(w, raw, "", "") for w, raw, _m in msgs])
            self._round_end(tid, f"⚠️ CLI error ({err})", result)
            return
        if task_msg is not None and attempt < max_attempts:
            backoff = min(rt.cfg.runtime.retry_backoff_s * (2 ** (attempt - 1)),
                          rt.cfg.runtime.retry_backoff_max_s)
            due = int((time.time() + backoff) * 1000)
            if tid:
                p = self.r.pipeline(transaction=False)
                p.hset(k.task(tid), mapping={"state": "assigned", "updated_at": hash_ts()})
                p.hset(attempts_key, "last_error", err)
                p.execute()
            for w, raw, m in msgs:
                if records.is_actionable(m):
                    env = records.dumps({"key": k.urgent(a) if w == "u" else k.inbox(a),
                                        "raw": raw, "id": m["id"], "head": w == "u"})
                    entries.append((w, raw, str(due), env))
                else:
                    entries.append((w, raw, "", ""))
            self._ack(entries)
            self._round_end(tid, f"⚠️ CLI error ({err}); retry in {backoff:g}s", result)
            return
        # Out of attempts (or a round without a task): failed + dead letter.
        reason = "max attempts" if task_msg is not None else "cli failed"
        detail = f"{err} (attempt {attempt}/{max_attempts})"
        if out_tail:
            detail += "\n" + out_tail[-1000:]
        if tid:
            rt.town.fail_task(tid, detail)
        p = self.r.pipeline(transaction=False)
        for w, raw, m in msgs:
            if records.is_actionable(m):
                rt.town.deadletter(reason, k.urgent(a) if w == "u" else k.inbox(a), raw, pipe=p,
                                   task=tid, agent=a, attempts=attempt, error=err)
        if attempts_key:
            p.hset(attempts_key, "last_error", err)
        p.execute()
        self._ack([(w, raw, "", "") for w, raw, _m in msgs])
        self._round_end(tid, f"❌ failed: {err}", result)

    def _round_ok(self, msgs, tid, result_text: str, result, rnd, task=None) -> None:
        """Exit 0 in one call (lua/round_ok.lua): complete the task unless the CLI finished it,
        ack, round bookkeeping, activity, the events and the notify."""
        rt, k, a = self.rt, self.k, self.aid
        now = hash_ts()
        ts = now.replace("+00:00", "Z")
        exp_aid = exp_tags = task_data = mission = note = ""
        if tid:
            task = task or {}
            exp_aid, exp_tags = task.get("assigned_to") or "", task.get("tags") or ""
            mission = mission_of(records.decode_tags(exp_tags)) or ""
            task_data = records.make_event("task_completed", f"Task {tid} completed", timestamp=ts,
                                          agent_id=exp_aid or None, task_id=tid,
                                          mission_id=mission or None)["data"]
            n = {"task": tid, "state": "completed"}
            if mission:
                n["mission"] = mission
            note = records.dumps(n)
        idle_data = records.make_event("agent_state_changed", "Agent state Working -> Idle",
                                      timestamp=ts, agent_id=a,
                                      **records.state_change_fields("working", "idle"))["data"]
        args = [k.p, now, result_text, tid or "", exp_aid, exp_tags, task_data, mission,
                k.notify, note, idle_data, f"Round {self.rounds}: ✅ completed", rt.owner,
                EVENT_MAXLEN_TOWN, EVENT_MAXLEN_AGENT, EVENT_MAXLEN_MISSION]
        entries = [(w, raw, "", "") for w, raw, _m in msgs] + self._extra_ack
        self._extra_ack = []
        for e in entries:
            args.extend(e)
        keys = [k.task(tid) if tid else k.agent(a), k.inflight_urgent(a), k.inflight(a),
                k.urgent(a), k.inbox(a), k.agent_lease(a), k.delayed, k.agent(a),
                k.agent_info(a), k.activity(a), k.events, k.agent_events(a)]
        if self.stop_requested or rt.stopping.is_set() or self.lost:
            res = rt.scripts.round_ok(keys=keys, args=args)
        else:
            # the next round's take in the same call (the loop uses it instead of its own take)
            res, self._pre = rt.scripts.round_ok_take(
                keys=keys + self._take_keys,
                args=[len(keys), len(args), *args, rt.owner, MAX_INBOX_PER_ROUND, k.p])
        code, fa, fb, evd, acked, old = res
        code = int(code)
        self._acked(acked)
        self.current_task = None
        self.state = "idle" if old in ("working", "idle", "starting", None) else old
        if code == -1:
            self.log.warning("task vanished during its round", task=tid)
        elif code == 1 and not int(evd):
            # assigned_to or tags changed during the round: the events from what Redis holds
            p2 = self.r.pipeline(transaction=False)
            rt.town.finish_result(p2, tid, "completed", result_text, [1, fa, fb])
            if old == "working":
                rt.town._emit_into(p2, "agent_state_changed", "Agent state Working -> Idle",
                                   {"agent_id": a,
                                    **records.state_change_fields("working", "idle")})
            try:
                p2.execute()
            except redis.RedisError as e:
                self.log.warning("round events not recorded", error=str(e))
        self.log.info("round completed", round=rnd, duration_s=round(result.duration_s, 3))

    def _round_end(self, tid, activity: str, result) -> None:
        rt, k, a = self.rt, self.k, self.aid
        now = hash_ts()
        p = self.r.pipeline(transaction=False)
        rt.scripts.agent_round_end(keys=[k.agent(a)], args=[now, tid or ""], client=p)
        p.hset(k.agent_info(a), mapping={"last_exit": "" if result.exit_code is None
                                         else str(result.exit_code), "task": ""})
        rt.town.log_activity(a, f"Round {self.rounds}: {activity}", pipe=p)
        old = p.execute()[0]
        self.current_task = None
        self.state = "idle" if old in ("working", "idle", "starting", None) else old
        if old == "working":
            rt.town.emit("agent_state_changed", "Agent state Working -> Idle", agent_id=a,
                         **records.state_change_fields("working", "idle"))

    # ------------------------------------------------------------------ prompt
    def _prompt(self, msgs, tid, task, task_msg, attempt, max_attempts) -> str:
        spec, rt = self.spec, self.rt
        lines = [f"# Tinytown agent {spec.name} (role {spec.role}) in town {rt.keys.town}", ""]
        if task_msg is not None:
            if tid:
                desc = (task or {}).get("description", "")
                lines += [f"## Task {tid}", "", desc, ""]
                lines += [f"(attempt {attempt} of {max_attempts}. When you finish, exit 0: the "
                          "daemon completes the task with the end of your output. To record a "
                          "specific result or a failure yourself: `tinytownd task complete "
                          "$TINYTOWN_TASK_ID --result \"...\"` or `tinytownd task fail "
                          "$TINYTOWN_TASK_ID --result \"why\"`.)", ""]
            else:
                lines += ["## Task", "", task_msg[2].get("description", ""), ""]
        others = [m for _w, _r, m in msgs if task_msg is None or m is not task_msg[2]]
        if others:
            lines += ["## Messages", ""]
            for m in others:
                sender = "supervisor" if m["from"] == records.SUPERVISOR_ID else m["from"]
                lines.append(f"- [{m['type']}] from {sender}: {records.message_text(m)}")
            lines.append("")
        return "\n".join(lines)
