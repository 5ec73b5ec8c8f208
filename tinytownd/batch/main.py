"""`tinytownd batch FILE`: the entry point and the two ways to run a batch.

  * embedded (default, `Embedded`): a Daemon with its own redis-server under the batch directory
    (`--dir`, default `.tinytownd/batches/<ID>`), the agents and the dispatcher in this process;
  * submit (`-c CONFIG`, `Submit`): the tasks go to the town of a running daemon, whose agents
    run them; this process only submits and follows progress.

Both run through one skeleton, `_run`: prepare (checks; the directory lock or the Redis clients),
announce, open (the town, then the batch), submit, follow, drain on a stop, summarise, close,
release.

Exit codes (tinytownd.exitcodes): OK every task completed, FAILURE some failed, BATCH_USAGE a usage
error or an invalid file, UNAVAILABLE Redis or a daemon unavailable, TEMPFAIL interrupted (Ctrl-C /
SIGTERM, the cost budget reached, an agent CLI paused, cooldowns past --max-wait: drained,
resumable with --resume ID; batch/guard.py).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path

import gevent
from gevent.event import Event

from tinytownd import config as cfgmod
from tinytownd import exitcodes, logs
from tinytownd.daemon.lifecycle import Daemon, StartError
from tinytownd.daemon.pidfile import PidFile, PidFileHeld
from tinytownd.daemon.redis_clients import RedisUnavailable, check_server, make_clients
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

from . import artifacts
from .agents import agent_sections, check_agents, embedded_config, roster, uses_workspaces
from .dispatch import DispatchedBatch
from .file import BatchFile, BatchFileError, UsageError, load
from tinytownd.store.durability import Durability

from .follow import Batch
from .guard import Guard, resume_hint
from .mission import MissionBatch, check_mission
from .progress import Reporter, dumps, make_reporter, render_table, summarize
from .tasks import TaskBatch

BATCH_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CATCH_UP_S = 0.25            # the longest wait for notifications between drain re-counts
RUNNER_GRACE_S = 15          # beyond the drain timeout, for the embedded daemon to shut down


class Unavailable(Exception):
    """Redis, or a daemon that serves the town, cannot be reached."""


def dashboard_url(listen: str) -> str:
    """The URL a person opens for `--http LISTEN` (every-interface addresses → loopback)."""
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"http://{host}:{port}/"


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def check_batch_id(bid: str) -> str:
    if not BATCH_ID_RE.fullmatch(bid or ""):
        raise UsageError(f"batch id {bid!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return bid


def _err(msg: str) -> None:
    print(f"tinytownd batch: {msg}", file=sys.stderr, flush=True)


MAX_COST_USD = 1e6           # --max-cost-usd
MAX_WAIT_S = 7 * 86400       # --max-wait


def check_limits(args) -> None:
    """--max-cost-usd and --max-wait: positive and bounded."""
    for opt, v, hi in (("--max-cost-usd", getattr(args, "max_cost_usd", None), MAX_COST_USD),
                       ("--max-wait", getattr(args, "max_wait", None), MAX_WAIT_S)):
        if v is not None and not (0 < v <= hi):
            raise UsageError(f"{opt} {v:g}: must be a number in (0, {hi:g}]")


def main(args) -> int:
    """`tinytownd batch` (args from commands/batch_cmd.py). Returns the exit code."""
    try:
        check_limits(args)
        bf = load(args.file)
        batch_id = check_batch_id(args.resume or args.batch_id or new_batch_id())
        if bf.kind == "mission":
            check_mission(bf)
        return _run(Submit(bf, batch_id, args) if args.config else Embedded(bf, batch_id, args))
    except (BatchFileError, UsageError) as e:
        _err(str(e))
        return exitcodes.BATCH_USAGE
    except Unavailable as e:
        _err(str(e))
        return exitcodes.UNAVAILABLE


# ----------------------------------------------------------------------------- the skeleton
class Stopper:
    """SIGINT/SIGTERM: the first asks for a drain (resumable), a second to stop at once."""

    def __init__(self):
        self.requested = Event()
        self.at_once = Event()
        self.signame: str | None = None
        self._handles = []

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handles.append(gevent.signal_handler(sig, self._on, sig))

    def _on(self, sig) -> None:
        if self.requested.is_set():
            self.at_once.set()
        self.signame = signal.Signals(sig).name
        self.requested.set()

    def uninstall(self) -> None:
        for h in self._handles:
            try:
                h.cancel()
            except Exception:
                pass


def _run(mode: "Mode") -> int:
    """Every batch, whichever the mode: prepare, announce, open, submit and follow, drain on a
    stop, summarise; the mode's town is stopped and its resources released on every way out."""
    try:
        mode.prepare()
        reporter = make_reporter(mode.args.progress, context={"batch_id": mode.batch_id})
        text, fields = mode.announcement()
        reporter.start(text, **fields)
        stopper = Stopper()
        stopper.install()
        try:
            batch = mode.open()
            batch.reporter = reporter
            t0 = time.monotonic()
            try:
                batch.subscribe()
                batch.write_meta()
                new, old, lost = batch.start(resume=mode.resume)
                batch.log.info("batch submitted", new=new, existing=old, requeued=lost,
                               submit_s=round(batch.submit_s, 3))
                guard = Guard(batch, reporter, stopper.requested, agent_clis=mode.agent_clis(),
                              max_cost_usd=getattr(mode.args, "max_cost_usd", None),
                              max_wait_s=getattr(mode.args, "max_wait", None),
                              on_stop=lambda d: setattr(stopper, "signame", d.stop),
                              pauses_since=getattr(mode, "started_at", None)).start()
                try:
                    done = batch.follow(stop_event=stopper.requested)
                finally:
                    guard.stop()
                if not done:
                    mode.drain(batch, stopper)
                batch.set_state("done" if done else "interrupted")
                reporter.finish(batch.counts())
                return _summarise(batch, reporter, mode, wall_s=time.monotonic() - t0,
                                  interrupted=not done, at_once=stopper.at_once.is_set(),
                                  guard=guard)
            finally:
                batch.close()
                mode.close(graceful=not stopper.at_once.is_set())
        finally:
            stopper.uninstall()
    finally:
        mode.release()


def exit_code(totals: dict, interrupted: bool) -> int:
    if totals["completed"] == totals["total"]:
        return exitcodes.OK
    if interrupted or totals["running"] + totals["queued"] > 0:
        return exitcodes.TEMPFAIL
    return exitcodes.FAILURE


def _summarise(batch: Batch, reporter: Reporter, mode: "Mode", *, wall_s: float,
               interrupted: bool, at_once: bool, guard: Guard | None = None) -> int:
    """Write the summary (--summary, the table, the last progress line); the exit code."""
    args = mode.args
    stop = guard.decision if guard is not None and guard.decision.stop else None
    extra = {"mode": mode.name, "file": os.path.abspath(batch.file.path),
             "submit_s": round(batch.submit_s, 3), "interrupted": interrupted,
             **mode.summary_extra()}
    if stop is not None:
        extra["stopped"] = {"reason": stop.stop, "message": stop.message,
                            "spent_usd": round(guard.spent_usd, 6)}
        batch.set_state("interrupted", stop_reason=stop.stop)
    doc = summarize(batch.id, batch.rows(), wall_s=wall_s, extra=extra)
    if getattr(batch, "mission_id", None):     # a mission's usage is summed on its meta
        doc["totals"].update(_mission_usage(batch))
    totals = doc["totals"]
    code = doc["exit_code"] = exit_code(totals, interrupted)
    notes = artifacts.write(batch, doc, patches_dir=getattr(args, "patches", None),
                            junit_path=getattr(args, "junit", None))
    if args.summary:
        _write_summary(args.summary, doc)
    table = render_table(doc)
    if notes:
        table += "\n" + "\n".join(notes)
    if interrupted:
        # one signal drains (running rounds finish); a second one stops at once
        how = "stopped" if at_once else "drained"
        why, hint = "interrupted", ""
        if stop is not None:
            why, hint = f"stopped: {stop.message}\n", resume_hint(stop.stop, list(stop.paused))
        table += (f"\n{why} ({how}): {hint}continue with"
                  f"  tinytownd batch {batch.file.path} --resume {batch.id}"
                  + (f" --dir {args.dir}" if args.dir else ""))
    reporter.summary(table, batch_id=batch.id, totals=totals, exit_code=code,
                     wall_time_s=doc["wall_time_s"], duration_p50_s=doc["duration_p50_s"],
                     duration_p95_s=doc["duration_p95_s"], summary_path=args.summary)
    return code


def _mission_usage(batch) -> dict:
    from tinytownd.runtime.agent_cli.usage import usage_view

    from .progress import USAGE_SUMMED

    got = usage_view(dict(zip(USAGE_SUMMED, batch.redis.hmget(
        batch.keys.mission_meta(batch.mission_id), USAGE_SUMMED))))
    return {k: got.get(k, 0) for k in USAGE_SUMMED}


def _write_summary(path: str, doc: dict) -> None:
    """Atomically: a temp file beside `path`, then rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        f.write(dumps(doc))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the modes
class Mode:
    """Where a batch's town is and how it drains. `_run` calls, in order: prepare (checks and
    claims; raises UsageError, BatchFileError or Unavailable), announcement, open (the town up,
    the batch on it), drain (after a stop request), close, release (always)."""

    name = ""

    def __init__(self, bf: BatchFile, batch_id: str, args):
        self.file = bf
        self.batch_id = batch_id
        self.args = args
        self.resume = bool(args.resume)

    def prepare(self) -> None:
        raise NotImplementedError

    def announcement(self) -> tuple[str, dict]:
        """The first line: text for a person, fields for the `batch.start` JSON line."""
        raise NotImplementedError

    def open(self) -> Batch:
        raise NotImplementedError

    def drain(self, batch: Batch, stopper: Stopper) -> None:
        raise NotImplementedError

    def close(self, *, graceful: bool) -> None:
        """The batch is over: stop what open() started."""

    def summary_extra(self) -> dict:
        return {}

    def agent_clis(self) -> dict[str, str]:
        """Agent name → agent CLI of the agents that run the batch (batch/guard.py)."""
        return {}

    def release(self) -> None:
        """Give back what prepare() took (also after it failed half-way)."""


class Embedded(Mode):
    """No -c: a daemon of the batch's own, its state under the batch directory."""

    name = "embedded"

    def __init__(self, bf: BatchFile, batch_id: str, args):
        super().__init__(bf, batch_id, args)
        self.root = Path(self.args.dir or Path.cwd() / ".tinytownd" / "batches" /
                         self.batch_id).absolute()
        self.lock = PidFile(self.root / "batch.lock")
        self.cfg = None
        self.daemon = None
        self.runner = None            # the greenlet of daemon.run

    def prepare(self) -> None:
        from tinytownd.store.wire import hash_ts
        self.started_at = hash_ts()          # pauses older than this start are ended by it
        bf, args, root = self.file, self.args, self.root
        clis, agents = agent_sections(bf, agents=args.agents, cli=args.cli)
        check_agents(bf, clis, agents)
        state_file = root / "batch.json"
        if self.resume:
            if not state_file.exists():
                raise UsageError(f"no batch {self.batch_id!r} to resume in {root} (give --dir if "
                                 "it ran elsewhere)")
            prev = json.loads(state_file.read_text())
            if prev.get("id") != self.batch_id:
                raise UsageError(f"{root} holds batch {prev.get('id')!r}, not {self.batch_id!r}")
        elif state_file.exists():
            raise UsageError(f"batch {self.batch_id!r} already exists in {root}: use --resume "
                             f"{self.batch_id}")
        root.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except PidFileHeld as e:
            raise UsageError(f"batch directory {root} is in use by another process"
                             + (f" (pid {e.pid})" if e.pid else "")) from None
        if not self.resume:
            state_file.write_text(json.dumps({
                "id": self.batch_id, "file": os.path.abspath(bf.path), "digest": bf.digest,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "agent_clis": clis, "agents": agents}, indent=1) + "\n")
        self.cfg = embedded_config(bf, root, clis, agents, appendfsync=args.appendfsync,
                                   http_listen=getattr(args, "http", None))
        if self.cfg.http.listen and not self.cfg.http.listen.endswith(":0"):
            self._say_dashboard(dashboard_url(self.cfg.http.listen))

    def _say_dashboard(self, url: str) -> None:
        if not getattr(self, "_dashboard_said", False):
            self._dashboard_said = True
            print(f"tinytownd batch: dashboard {url}", file=sys.stderr, flush=True)

    def _n_agents(self) -> int:
        return len(self.cfg.expanded_agents())

    def announcement(self) -> tuple[str, dict]:
        bf = self.file
        what = "work items" if bf.kind == "mission" else "tasks"
        return (f"batch {self.batch_id}: {bf.size()} {what}, {self._n_agents()} agents "
                f"(dir {self.root})",
                {"batch_id": self.batch_id, "tasks": bf.size(), "kind": bf.kind,
                 "agents": self._n_agents(), "dir": str(self.root), "resume": self.resume,
                 "mode": self.name})

    def open(self) -> Batch:
        self.daemon = Daemon(self.cfg, install_signals=False)
        try:
            self.daemon.start()      # on failure it has undone what it started
        except StartError as e:
            if e.exit_code == exitcodes.UNAVAILABLE:
                raise Unavailable(str(e)) from None
            raise UsageError(str(e)) from None
        log = logs.get_logger("tinytownd.batch", batch=self.batch_id)
        http = next((c for c in self.daemon.components if c.name == "http"), None)
        if http is not None and http.url:
            self._say_dashboard(http.url)
        self.runner = gevent.spawn(self.daemon.run)
        r, keys = self.daemon.ctx.clients.cmd, self.daemon.ctx.keys
        if self.file.kind == "mission":
            batch = MissionBatch(self.file, self.batch_id, r, keys, log=log,
                                 roles={a.role for a in self.cfg.expanded_agents()})
        else:
            batch = DispatchedBatch(self.file, self.batch_id, r, keys, log=log,
                                    roster=roster(self.cfg),
                                    link_meta=uses_workspaces(self.cfg) or
                                    getattr(self.args, "max_cost_usd", None) is not None)
        batch.town.task_events = self.cfg.runtime.task_events
        return batch

    def drain(self, batch: Batch, stopper: Stopper) -> None:
        """Stop handing out work and let running rounds finish (until drain_timeout_s or a
        second signal), following the counts meanwhile. Queued tasks stay for --resume."""
        batch.reporter.note(f"{stopper.signame or 'stop'}: draining (running tasks finish, "
                            "queued ones stay for --resume)")
        batch.stop_dispatching()
        deadline = time.monotonic() + self.daemon.cfg.daemon.drain_timeout_s
        drains = [gevent.spawn(c.drain, deadline) for c in self.daemon.components]
        while time.monotonic() < deadline and not stopper.at_once.is_set():
            batch.catch_up(CATCH_UP_S)
            if all(g.dead for g in drains):
                break
        batch.recount(all_tasks=True)
        gevent.killall([g for g in drains if not g.dead], timeout=1)

    def close(self, *, graceful: bool) -> None:
        self.daemon.request_stop(graceful=graceful)
        self.runner.join(timeout=self.cfg.daemon.drain_timeout_s + RUNNER_GRACE_S)
        if not self.runner.dead:
            self.runner.kill()

    def summary_extra(self) -> dict:
        return {"dir": str(self.root), "agents": self._n_agents()}

    def agent_clis(self) -> dict[str, str]:
        return {a.name: a.cli for a in self.cfg.expanded_agents()}

    def release(self) -> None:
        self.lock.release()


class Submit(Mode):
    """-c CONFIG: submit to the town of a running daemon and follow its progress."""

    name = "submit"

    def __init__(self, bf: BatchFile, batch_id: str, args):
        super().__init__(bf, batch_id, args)
        self.cfg = None
        self.clients = None
        self.keys = None
        self.daemons: list[str] = []   # the daemon records of the town
        self.batch: Batch | None = None

    def prepare(self) -> None:
        bf, args = self.file, self.args
        try:
            self.cfg = cfg = cfgmod.load(args.config, check_files=False)
        except cfgmod.ConfigError as e:
            raise UsageError(str(e)) from None
        if bf.agents or args.agents or args.cli:
            print("tinytownd batch: note: -c submits to the daemon's agents; agents:/--agents/"
                  "--cli are ignored", file=sys.stderr)
        if args.dir or args.appendfsync or getattr(args, "http", None):
            print("tinytownd batch: note: --dir/--appendfsync/--http only apply to embedded runs "
                  "(the daemon serves its own http.listen)",
                  file=sys.stderr)
        logs.configure("warning", "/dev/stderr")
        self.clients = make_clients(cfg, blocking_connections=1)
        try:
            check_server(self.clients.cmd, self.clients.redacted)
        except RedisUnavailable as e:
            raise Unavailable(str(e)) from None
        keys, r = Keys(cfg.town.name), self.clients.cmd
        try:
            self.daemons = list(r.scan_iter(match=keys.daemon_pattern(), count=1000))
        except Exception as e:
            raise Unavailable(f"Redis error: {e}") from None
        if not self.daemons:
            raise Unavailable(f"no tinytownd daemon is running town {cfg.town.name!r} at "
                              f"{self.clients.redacted}; start it (tinytownd run -c "
                              f"{args.config}) or run the batch embedded (no -c)")
        self.keys = keys
        roles = self._live_roles()
        self._check_roles(roles)
        log = logs.get_logger("tinytownd.batch", batch=self.batch_id)
        self.batch = (MissionBatch(bf, self.batch_id, r, keys, log=log, roles=roles)
                      if bf.kind == "mission" else TaskBatch(bf, self.batch_id, r, keys, log=log))
        self.batch.town.task_events = cfg.runtime.task_events
        # redis.wait_replicas: the submission's writes are WAITed for (store/durability.py)
        self.batch.town.set_durability(Durability.from_config(cfg, log))
        if self.resume and not self.batch.exists():
            raise UsageError(f"no batch {self.batch_id!r} in town {cfg.town.name!r} to resume")
        if not self.resume and self.batch.exists():
            raise UsageError(f"batch {self.batch_id!r} already exists in town {cfg.town.name!r}: "
                             f"use --resume {self.batch_id}")

    def _live_roles(self) -> set[str]:
        """The roles of the town's live agents."""
        agents = Town(self.clients.cmd, self.keys).list_agents()
        return {a.get("role_id") or "default" for a in agents
                if a.get("state") not in ("stopped", "error", "cold")}

    def _check_roles(self, roles: set[str]) -> None:
        for t in self.file.tasks:
            if t.role and t.role not in roles:
                raise BatchFileError(self.file.path, t.entry(), f"role {t.role!r}: no live agent "
                                     f"of town {self.cfg.town.name!r} has it (roles: "
                                     f"{', '.join(sorted(roles)) or 'none'})")

    def announcement(self) -> tuple[str, dict]:
        bf, town = self.file, self.cfg.town.name
        return (f"batch {self.batch_id}: {bf.size()} {bf.kind} → town {town} "
                f"({len(self.daemons)} daemon(s))",
                {"batch_id": self.batch_id, "tasks": bf.size(), "kind": bf.kind, "town": town,
                 "resume": self.resume, "mode": self.name})

    def open(self) -> Batch:
        return self.batch

    def drain(self, batch: Batch, stopper: Stopper) -> None:
        """Take the batch's unstarted tasks back out of the backlog and wait for running ones."""
        withdrawn = batch.withdraw()
        batch.reporter.note(f"{stopper.signame or 'stop'}: {withdrawn} queued tasks withdrawn "
                            "from the backlog; waiting for running ones")
        deadline = time.monotonic() + self.cfg.daemon.drain_timeout_s
        while time.monotonic() < deadline and not stopper.at_once.is_set():
            if batch.catch_up(CATCH_UP_S).running == 0:
                break

    def summary_extra(self) -> dict:
        return {"town": self.cfg.town.name}

    def agent_clis(self) -> dict[str, str]:
        agents = Town(self.clients.cmd, self.keys).list_agents()
        return {a["name"]: a["cli"] for a in agents if a.get("name") and a.get("cli")
                and a.get("state") not in ("stopped", "error", "cold")}

    def release(self) -> None:
        if self.clients is not None:
            self.clients.close()
