"""One round of an agent: the messages it took, the CLI run, and what its end writes (the writes
themselves, one method per outcome, are in round_writes.py).

  1. The taken messages are decoded; what tt could not read is dead-lettered (and removed from
     in-flight in the same MULTI). One task-bearing message per round: further ones stay in
     flight and go back to their queue heads with this round's ack.
  2. round_start (one Lua call): agent `working` + current_task, task `running`, attempts += 1.
  3. The CLI runs (runner.py) with the prompt on stdin, in a file or as an argument
     (agent_cli/delivery.py) and always in $TINYTOWN_PROMPT_FILE; its output is parsed as it
     comes when the CLI declares a structured format (agent_cli/output.py).
  4. The end (agent_cli/report.py judges, outcome.py decides): success → round_ok (task completed
     with the result unless the CLI finished it itself, ack, bookkeeping, usage, events, notify —
     and the next round's take, in one call); a failure → retry with backoff (the envelope is
     parked in the delayed zset in the same call as the ack) or, out of attempts, task `failed`
     + dead letter; rate limited → the messages go back without using an attempt and the CLI
     cools down for the town; fatal → task `failed` at once and the CLI paused for the town;
     interrupted → the messages go back to the queue heads (or stay in flight for the lease's
     new owner). Every failure has its class, on the task and in the log line.
"""
from __future__ import annotations

import os
import time

import structlog

from tinytownd import metrics
from tinytownd.store import events, records
from tinytownd.store.records import TASK_BEARING, Poison
from tinytownd.store.wire import TASK_TERMINAL, hash_ts

from . import outcome, runner
from .agent_cli import accounting, delivery, output, report, usage as usage_mod
from .process import close_fd
from .prompt import round_prompt
from .round_logs import RoundLogs, log_name
from .round_writes import RoundWrites
from tinytownd.workspaces.round_hook import RoundWorkspace

MAX_INBOX_PER_ROUND = 100


def _pairs(flat) -> dict:
    """A flat [field, value, ...] reply (HGETALL inside Lua) as a dict."""
    it = iter(flat or ())
    return dict(zip(it, it))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
        close_fd(fd)


def started_of(info):
    """(tid, attempt, task state before, started_at before) when take_round's reply says it
    started the round of a task_assign (lua/take_round.lua), else None."""
    if info and len(info) >= 7 and info[0] == "task_assign":
        return info[1], int(info[4]), info[5], info[6]
    return None


def unstart(w, started) -> None:
    """lua/round_unstart.lua for a start take_round made (Round.started) that is not run."""
    if not started:
        return
    k, tid = w.keys, started[0]
    w.links.scripts.round_unstart(keys=[k.task(tid), k.task_meta(tid), k.agent(w.aid)],
                                  args=[tid, started[2] or "", started[3] or "", hash_ts()])


class Round(RoundWrites):
    """One round of worker `w` (it reads and updates the worker's state: pid, state, rounds,
    current_task, lost, extra_ack, next_take)."""

    def __init__(self, w, urgent_raw: list[str], inbox_raw: list[str], info=()):
        """`info`: take_round's reading of the first task-bearing message (its task hash and
        daemon meta); used when it names the task this round runs, else they are read here."""
        self.w = w
        self.links = w.links
        self.k, self.aid = w.keys, w.aid
        self.taken = [("u", x) for x in urgent_raw] + [("i", x) for x in inbox_raw]
        self.took_urgent = bool(urgent_raw)   # inflight_urgent needs emptying by the ack
        self.info = info
        # take_round started the round of this task already (agent working, task running,
        # attempts += 1): (tid, attempt, task state before, started_at before)
        self.started = started_of(info)

    # ------------------------------------------------------------------ 1. the messages
    def run(self) -> None:
        w, k, a = self.w, self.k, self.aid
        town = self.links.town
        w.round_tasks, w.round_streams = [], []
        good: list[tuple[str, str, dict]] = []
        poison: list[tuple[str, str, str]] = []
        for which, raw in self.taken:
            try:
                good.append((which, raw, records.decode_message(raw)))
            except Poison as e:
                poison.append((which, raw, e.reason))
        if poison:
            self._deadletter_poison(poison)
        task_msgs = [g for g in good if g[2]["type"] in TASK_BEARING]
        actionable = [g for g in good if records.is_actionable(g[2])]
        deferred = task_msgs[1:]
        this_round = [g for g in good if g not in deferred]
        task_msg = task_msgs[0] if task_msgs else None
        tid: str | None = None
        task: dict | None = None
        meta: dict = {}
        info = self.info
        if task_msg and task_msg[2]["type"] == "task_assign":
            tid = task_msg[2]["task_id"]
            w.round_tasks = [tid]
            if info and info[0] == "task_assign" and info[1] == tid:
                task, meta = _pairs(info[2]), _pairs(info[3])
            else:
                p = w.r.pipeline(transaction=False)
                p.hgetall(k.task(tid))
                p.hgetall(k.task_meta(tid))
                task, meta = p.execute()
            if not task or "id" not in task:
                town.deadletter("unknown task", k.inbox(a), task_msg[1], task=tid, agent=a)
                w.log.warning("task_assign for a task that does not exist", task=tid)
                w.extra_ack.append((task_msg[0], task_msg[1], "", ""))
                this_round = [g for g in this_round if g is not task_msg]
                actionable = [g for g in actionable if g is not task_msg]
                task_msg, tid, task = None, None, None
            elif records.parse_task(task)["state"] in TASK_TERMINAL:
                w.log.info("task already finished; skipping", task=tid, state=task.get("state"))
                task_msg, tid, task = None, None, None
        if self.started and self.started[0] != tid:
            self.unstart()      # the daemon runs another task (or none) in this round
        if task_msg is None and not [g for g in actionable if g[2]["type"] not in TASK_BEARING]:
            # Nothing to run: non-actionable mail is consumed (as tt does), the rest acked.
            self._ack([(wh, raw, "", "") for wh, raw, _m in this_round])
            return
        if task_msg is not None and tid is None:   # a `task` message (description only)
            mid = task_msg[2]["id"]
            w.round_tasks = [mid]
            if info and info[0] == "task" and info[1] == mid:
                meta = _pairs(info[3])
            else:
                meta = w.r.hgetall(k.task_meta(mid))
        self.msgs, self.task_msg, self.tid, self.task = this_round, task_msg, tid, task
        self.meta = meta
        self.mission = records.mission_of(records.decode_tags(task.get("tags"))) \
            if task else None
        if task:    # streams the round's end writes besides the agent's own (quarantine)
            mission = records.mission_of(records.decode_tags(task.get("tags")))
            if task.get("assigned_to"):
                w.round_streams.append(k.agent_events(task["assigned_to"]))
            if mission:
                w.round_streams.append(k.mission_events_stream(mission))
        with structlog.contextvars.bound_contextvars(task=tid):
            self._run_cli(meta)

    def _deadletter_poison(self, poison) -> None:
        k, a = self.k, self.aid
        p = self.w.r.pipeline(transaction=True)
        for which, raw, reason in poison:
            src = k.urgent(a) if which == "u" else k.inbox(a)
            self.links.town.deadletter(reason, src, raw, pipe=p, agent=a)
            p.lrem(k.inflight_urgent(a) if which == "u" else k.inflight(a), 1,
                   records.to_bytes(raw))
        p.execute()
        for _w, _raw, reason in poison:
            self.w.log.warning("poison message dead-lettered", reason=reason)

    def unstart(self) -> None:
        """Take back take_round's start of a round this worker does not run."""
        started, self.started = self.started, None
        unstart(self.w, started)

    def _ack_groups(self, entries) -> list:
        """ack_round's groups: the entries, the worker's extra acks, and the 'U' flag when
        the round took urgent messages."""
        w = self.w
        entries = list(entries) + w.extra_ack
        w.extra_ack = []
        if self.took_urgent:
            entries.append(("U", "", "", ""))
        out = []
        for e in entries:
            out.extend(e)
        return out

    def _ack(self, entries, pipe=None):
        """entries: (which, raw, score, envelope). Fenced by the lease. With `pipe`, only
        queued (the caller checks the reply with _acked)."""
        k, a = self.k, self.aid
        args = [self.links.owner, *self._ack_groups(entries)]
        res = self.links.scripts.ack_round(
            keys=[k.inflight_urgent(a), k.inflight(a), k.urgent(a), k.inbox(a), k.agent_lease(a),
                  k.delayed], args=args, client=pipe)
        return self._acked(res) if pipe is None else None

    def _acked(self, res) -> bool:
        if not int(res):
            self.w.lost = True
            self.w.exit_reason = "lease lost"
        return bool(int(res))

    def _limits(self, meta: dict) -> tuple[int, float | None]:
        s = self.w.settings
        try:
            max_attempts = int(meta.get("max_attempts") or s.max_attempts)
        except ValueError:
            max_attempts = s.max_attempts
        timeout = s.timeout_s
        if meta.get("timeout_s"):
            try:
                timeout = float(meta["timeout_s"])
            except ValueError:
                pass
        return max(1, max_attempts), timeout

    # ------------------------------------------------------------------ 2., 3. start and run
    def _run_cli(self, meta: dict) -> None:
        w, k, a, links = self.w, self.k, self.aid, self.links
        s, tid, task_msg = w.settings, self.tid, self.task_msg
        cfg = links.config()
        attempts_key = k.task_meta(tid if tid else task_msg[2]["id"]) if task_msg else None
        max_attempts, timeout = self._limits(meta)
        now = hash_ts()
        w.rounds += 1
        rnd = w.rounds
        old_state = w.state if w.state in ("idle", "paused", "starting") else "idle"
        lifecycle = cfg.runtime.task_events == "lifecycle"
        ev = events.agent_state_changed(a, old_state, "working")
        if self.started and self.started[0] == tid:
            attempt = self.started[1]    # take_round started it; only the event is left
            if lifecycle:
                links.town.emit(ev)
        else:
            # One call: agent working + current_task, task running, attempts += 1, event.
            attempt = int(links.scripts.round_start(
                keys=[k.agent(a), k.agent_info(a), k.task(tid) if tid else k.agent(a),
                      attempts_key or k.agent_info(a), k.events, k.agent_events(a)],
                args=[now, tid or "", "1" if attempts_key else "0", rnd,
                      ev.data if lifecycle else "", events.TOWN_MAXLEN, events.AGENT_MAXLEN,
                      log_name(s.name, rnd, tid)]))
        self.wrote_info = not (self.started and self.started[0] == tid)   # round_start's task
        self.started = None
        if attempt == 1 and task_msg:
            metrics.pickup(s.cli, task_msg[2].get("created_at"), time.time())
        w.state = "working"
        w.current_task = tid
        others = [m for _w, _r, m in self.msgs if task_msg is None or m is not task_msg[2]]
        prompt = round_prompt(agent=s.name, role=s.role, town=k.town, task_id=tid,
                              task=self.task, task_msg=task_msg[2] if task_msg else None,
                              others=others, attempt=attempt, max_attempts=max_attempts)
        logs_dir = cfg.logs_dir_str
        prompt_path = os.path.join(logs_dir, f"{s.name}_prompt.md")
        self.rnd, self.attempt, self.max_attempts = rnd, attempt, max_attempts
        self.attempts_key = attempts_key
        try:
            _write_file(prompt_path, prompt.encode("utf-8", "surrogateescape"))
        except OSError as e:
            # the daemon's disk, not the task: no attempt used, the work waits and comes back
            self._defer(f"cannot write the prompt file {prompt_path}: {e.strerror}", cfg)
            return
        w.problem, w.deferrals = None, 0
        cli = s.agent_cli
        try:
            command, stdin_text = delivery.prepare(cli.prompt, s.command, prompt, prompt_path)
        except delivery.PromptTooLong as e:
            command, stdin_text, too_long = "exit 64", "", str(e)
        else:
            too_long = None
        usage_path = os.path.join(logs_dir, f"{s.name}_usage.json")
        env = links.env.get(s, prompt_path, cfg.path, usage_path)
        exports = {"TINYTOWN_TASK_ID": tid} if tid else None
        self.ws = None
        if s.workspace is not None and tid:     # worktree mode: the task's own worktree
            self.ws = RoundWorkspace(links.workspaces, s, tid, self.task, w.log)
            trouble = self.ws.prepare(meta, env, logs_dir)
            if trouble is not None:
                _unlink(prompt_path)
                self._workspace_trouble(trouble, cfg)
                return
            exports.update(self.ws.exports())
        w.round_started = time.monotonic()
        w.log.debug("round started", round=rnd, attempt=attempt, task=tid)
        rt = cfg.runtime
        if w.round_logs is None:
            w.round_logs = RoundLogs(logs_dir, s.name)
        w.round_logs.kept, w.round_logs.max_bytes = rt.round_logs_kept, rt.round_logs_max_bytes
        log_path = w.round_logs.path(rnd, tid)

        def on_start(pid):
            w.pid = pid
            for hook in links.spawn_hooks:
                hook(w, tid, pid)

        parser = output.collector(cli.output)
        result = runner.run(command, prompt=stdin_text, env=env,
                            cwd=self.ws.cwd if self.ws is not None else s.workdir,
                            exports=exports,
                            log_path=log_path, timeout_s=timeout,
                            should_stop=lambda: w.kill_now or w.lost, on_start=on_start,
                            tail_bytes=cfg.runtime.result_tail_bytes,
                            log_head_bytes=rt.round_log_max_bytes // 4,
                            log_tail_bytes=rt.round_log_max_bytes - rt.round_log_max_bytes // 4,
                            lifeline=links.lifeline,
                            inactivity_timeout_s=cli.inactivity_timeout_s,
                            observer=parser.feed if parser is not None else None)
        w.pid = None
        w.round_started = None
        _unlink(prompt_path)
        w.round_logs.add(log_path, result.log_bytes)
        if result.log_error:
            w.log.warning("round log incomplete", error=result.log_error)
        verdict = report.judge(result, cli, parser.parse() if parser is not None else None,
                               usage_mod.from_file(usage_path), time.time())
        if too_long:
            verdict.failure, verdict.error = "error", too_long
        for note in verdict.notes:
            w.log.warning("round usage not recorded", problem=note)
        self._end(result, cfg, verdict)

    # ------------------------------------------------------------------ 4. the end
    def _end(self, result, cfg, verdict=None) -> None:
        w, k, a, tid, town = self.w, self.k, self.aid, self.tid, self.links.town
        rt = cfg.runtime
        verdict = verdict if verdict is not None else report.Verdict(
            failure=None if result.ok else ("timeout" if result.timed_out else "error"))
        ws = getattr(self, "ws", None)
        if ws is not None and result.ok and verdict.failure is None and not w.lost:
            result = ws.after_exit0(result, lambda err: runner.CliResult(   # before completing
                None, False, False, result.duration_s, result.pid, error=err,
                output=result.output))
            if not result.ok:
                verdict = report.Verdict(failure="error", error=result.error or "workspace",
                                         usage=verdict.usage)
        self.verdict = verdict
        task_state = w.r.hget(k.task(tid), "state") if tid and verdict.failure and \
            not (result.killed or w.lost) else None
        out = outcome.decide(result, lease_lost=w.lost, has_task=self.task_msg is not None,
                             task_state=task_state, attempt=self.attempt,
                             max_attempts=self.max_attempts, backoff_s=rt.retry_backoff_s,
                             backoff_max_s=rt.retry_backoff_max_s, failure=verdict.failure,
                             error=verdict.error)
        metrics.round_end(w.settings.cli, out.kind, result.duration_s,
                          verdict.failure or outcome.failure_class(result), usage=verdict.usage)
        if ws is not None and out.kind != "ok":
            ws.after_outcome(out.kind, task_state)
        msgs, rnd, attempt = self.msgs, self.rnd, self.attempt
        if out.kind == "interrupted":
            # Operator kill, drain deadline or lost lease: the work goes back (not an attempt).
            w.log.warning("round interrupted; messages requeued", round=rnd)
            w.extra_ack = []
            if self.attempts_key:
                self.links.scripts.counter(keys=[self.attempts_key], args=["attempts", -1])
            if not w.lost:
                p = w.r.pipeline(transaction=False)
                if tid:
                    town.reassigned(tid, p)
                self._queue_usage(p)
                self.links.scripts.requeue_inflight(keys=w.queue_keys(), client=p)
                p.execute()
                self._round_end("🛑 interrupted", result)
            return
        if out.kind == "ok":
            self._ok(verdict.result or result.output or "Completed", result)
            return
        err = out.error
        w.log.warning("round failed", round=rnd, error=err, attempt=attempt,
                      max_attempts=self.max_attempts, failure_class=out.failure_class)
        if out.kind != "rate_limited":
            p = w.r.pipeline(transaction=False)
            self._queue_usage(p)
            accounting.queue_failure(p, self.attempts_key, self.meta, out.failure_class, err)
            p.execute()
        if out.kind == "cli_finished":
            self._ack([(wh, raw, "", "") for wh, raw, _m in msgs])
            self._round_end(f"⚠️ CLI error ({err})", result)
            return
        if out.kind == "rate_limited":
            self._rate_limited(err, result)
            return
        if out.kind == "retry":
            self._retry(out.backoff_s, err, result)
            return
        # failed: out of attempts (or a round without a task)
        detail = f"{err} (attempt {attempt}/{self.max_attempts})"
        if result.output:
            detail += "\n" + result.output[-1000:]
        if tid:
            town.fail_task(tid, detail)
        p = w.r.pipeline(transaction=False)
        for wh, raw, m in msgs:
            if records.is_actionable(m):
                town.deadletter(out.reason, k.urgent(a) if wh == "u" else k.inbox(a), raw,
                                pipe=p, task=tid, agent=a, attempts=attempt, error=err)
        if self.attempts_key:
            p.hset(self.attempts_key, "last_error", err)
        p.execute()
        self._ack([(wh, raw, "", "") for wh, raw, _m in msgs])
        if out.failure_class == "fatal":
            name = w.settings.cli
            self.links.cli_state.pause(name, err)
            w.log.error("agent CLI paused for the town after a fatal error; `tinytownd "
                        "resume-cli` (or a reload) ends the pause", cli=name, error=err)
            self._round_end(f"❌ fatal: {err}; CLI {name} paused", result)
            return
        self._round_end(f"❌ failed: {err}", result)

    def _workspace_trouble(self, trouble, cfg) -> None:
        """Worktree mode: the task's workspace could not be prepared (workspaces/round_hook.py)."""
        if trouble.defer:
            self._defer(trouble.message, cfg)
            return
        if trouble.final:
            self.max_attempts = self.attempt     # another attempt would meet the same
        self._end(runner.CliResult(None, False, False, 0.0, None, error=trouble.message,
                                   output=trouble.output), cfg)
