"""The fault suite's site: a town under test (one restartable daemon, its Redis, its agents and
their own execution log), and the measurement of what happened to every task."""
from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from tests.support import leftovers  # noqa: E402
from tests.support.daemon import DaemonProcess  # noqa: E402
from tinytownd.daemon import control  # noqa: E402
from tinytownd.store.keys import Keys  # noqa: E402
from tinytownd.store.town import Town  # noqa: E402
from .harness import (AGENT_SH, STATUS_TIMEOUT_S, TERMINAL, TOWN, Deadline, Monitor, Result,  # noqa: E402,F401
                      alive, has_traceback, procs_matching, rss_kb, run, tail_text, tt, wait_until)


# ----------------------------------------------------------------------------- the site
def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Site:
    """A town under test: one daemon (restartable), its Redis, its agents, its exec log."""

    def __init__(self, trial, name: str = "site", *, agents: int = 3, sleep: float = 0.2,
                 root: Path | None = None, agent_clis: dict | None = None,
                 agent_specs: list | None = None, **sections):
        self.trial = trial
        self.result: Result = trial.result
        self.name = name
        self.root = Path(root) if root else trial.dir / name
        self.exec_log = trial.dir / f"{name}-exec.log"
        self.agent_path = trial.dir / "agent.sh"
        if not self.agent_path.exists():
            self.agent_path.write_text(AGENT_SH)
            self.agent_path.chmod(0o755)
        self.exec_log.touch()
        base = {
            "runtime": {"heartbeat_interval_s": 0.5, "lease_ttl_s": 3.0, "stale_after_s": 4.0,
                        "sweep_interval_s": 0.5, "retry_backoff_s": 0.2,
                        "retry_backoff_max_s": 2.0, "block_timeout_s": 0.5},
            "daemon": {"drain_timeout_s": 5.0},
            "missions": {"lease_ttl_s": 3.0, "sweep_interval_s": 1.0},
            "agent_clis": {"fa": {"command": f"sh {self.agent_path}", "timeout_s": 30,
                                  "max_attempts": 3,
                                  "env": {"FA_LOG": str(self.exec_log), "FA_SLEEP": str(sleep),
                                          "FA_DIR": str(trial.dir)}}},
            "agents": [{"name": "w", "cli": "fa", "count": agents}] if agents > 1 else
                      [{"name": "w-1", "cli": "fa"}],
        }
        if agent_clis:
            base["agent_clis"].update(agent_clis)
        if agent_specs is not None:
            base["agents"] = agent_specs
        self.sections = _merge(base, sections)
        self.sections["town"] = {"name": TOWN, "root": str(self.root)}
        self.d = DaemonProcess(self.root, **self.sections)
        self.monitor: Monitor | None = None
        self.monitors: list[Monitor] = []
        # pids of daemon processes this site brought down on purpose (kill -9, SIGTERM): their
        # exit is no finding. Per process, so a monitor poll between a kill and the restart's
        # new process cannot mistake the killed one for a crash.
        self.downed: set[int] = set()
        self.keys = Keys(TOWN)
        self.t0 = time.monotonic()
        self.pids: list[int] = []
        self._r = None

    # --- redis ---------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        url = (self.sections.get("redis") or {}).get("url")
        return url or f"unix://{self.root / 'redis.sock'}"

    def client(self, *, decode: bool = True, timeout: float = 10.0) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=decode,
                                    socket_timeout=timeout, socket_connect_timeout=timeout)

    @property
    def r(self) -> redis.Redis:
        if self._r is None:
            self._r = self.client()
        return self._r

    @property
    def town(self) -> Town:
        return Town(self.r, self.keys, log=_NullLog())

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Site":
        self.d.start(wait=False)
        self.pids.append(self.d.proc.pid)
        try:
            self.d.wait_ready(timeout)
        except AssertionError as e:
            self.result.crashes += 1
            self.result.note(f"daemon did not start: {str(e)[-500:]}")
            raise
        if self.monitor is None or self.monitor.stop_evt.is_set():
            self.monitor = Monitor(self)
            self.monitors.append(self.monitor)
            self.monitor.start()
        self.monitor.paused.clear()
        self.wait_agents()
        return self

    def wait_agents(self, timeout: float = 15.0) -> bool:
        """Until every configured agent's worker runs (idle)."""
        n = sum(int(a.get("count", 1)) for a in self.sections.get("agents", []))

        def ok():
            try:
                st = self.d.status()
            except Exception:
                return False
            rt = (st.get("components") or {}).get("runtime") or {}
            return rt.get("agents_running", 0) >= n
        return bool(wait_until(ok, timeout, 0.1))

    def status(self, timeout: float = STATUS_TIMEOUT_S) -> dict | None:
        try:
            return control.request(self.d.control_sock, "status", timeout=timeout)
        except Exception:
            return None

    def daemon_pid(self) -> int | None:
        return self.d.proc.pid if self.d.proc is not None and self.d.proc.poll() is None else None

    def redis_pid(self) -> int | None:
        st = self.d.status()
        return (st.get("redis") or {}).get("pid")

    def kill9(self) -> None:
        """kill -9 of the daemon (an injected crash, not a finding)."""
        self._bring_down()
        self.d.kill()

    def _bring_down(self) -> None:
        if self.d.proc is not None:
            self.downed.add(self.d.proc.pid)

    def stop(self) -> None:
        """SIGTERM and wait drain_timeout + 15 s; longer = a hang; then whatever is left."""
        proc = self.d.proc
        self._bring_down()
        if self.monitor is not None:
            self.monitor.paused.set()
        if proc is not None and proc.poll() is None:
            drain = float(self.sections.get("daemon", {}).get("drain_timeout_s", 30))
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(drain + 15)
            except subprocess.TimeoutExpired:
                self.result.hangs += 1
                self.result.note(f"daemon ignored SIGTERM for {drain + 15:g}s "
                                 f"(drain_timeout_s {drain:g})")
                self.d.kill()
        if self.monitor is not None:
            self.monitor.finish()
        time.sleep(0.2)
        left = [p for p in leftovers.pids_under(self.root)]
        if left:
            descr = []
            for p in left[:5]:
                try:
                    descr.append(open(f"/proc/{p}/cmdline", "rb").read().replace(
                        b"\0", b" ").decode(errors="replace")[:80])
                except OSError:
                    pass
            self.result.note(f"{len(left)} process(es) left under the town root after the "
                             f"daemon stopped: {descr}")
        self.d.cleanup()

    # --- load ----------------------------------------------------------------------------
    def submit(self, n: int, *, prefix: str = "job", tags=(), retries_s: float = 0.0) -> list[str]:
        """n backlog tasks through the store API (what `tinytownd backlog add` calls). A task
        whose submission raised is not counted as submitted."""
        out = []
        for i in range(n):
            end = time.monotonic() + retries_s
            while True:
                try:
                    out.append(self.town.backlog_add(f"{prefix} {i}", tags=tags))
                    break
                except redis.RedisError as e:
                    if time.monotonic() >= end:
                        self.result.note(f"submission refused: {type(e).__name__}: {e}")
                        break
                    time.sleep(0.2)
        self.result.submitted += len(out)
        return out

    def cli_backlog(self, desc: str = "probe") -> str | None:
        p = tt("backlog", "add", desc, "-c", self.d.cfg_path, timeout=20)
        if p.returncode == 0:
            return p.stdout.decode().strip().split()[-1]
        self.result.note(f"`tinytownd backlog add` exit {p.returncode}: {tail_text(p.stderr)}")
        return None

    def cli_assign(self, agent: str, desc: str = "probe", *extra) -> str | None:
        p = tt("assign", agent, desc, "-c", self.d.cfg_path, *extra, timeout=20)
        if p.returncode == 0:
            return p.stdout.decode().strip().split()[-1]
        self.result.note(f"`tinytownd assign` exit {p.returncode}: {tail_text(p.stderr)}")
        return None

    def aid(self, name: str) -> str:
        return self.r.hget(self.keys.agent_names, name)

    # --- observation ---------------------------------------------------------------------
    def executions(self) -> collections.Counter:
        """Executions per task, as the agent counted them; a planned failure (FAILONCE: the
        attempt failed on purpose, and was retried) is not an extra execution."""
        c = collections.Counter()
        try:
            for line in self.exec_log.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "START":
                    c[parts[1]] += 1
                elif len(parts) >= 2 and parts[0] == "FAIL":
                    c[parts[1]] -= 1
        except OSError:
            pass
        return c

    def running_rounds(self) -> int:
        """Rounds in flight now: agent processes alive (distinct process groups; each round is
        its own session) and, from the agent's own log, starts without an end."""
        groups = {pg for _pid, pg in procs_matching(str(self.agent_path))}
        starts, ends = collections.Counter(), collections.Counter()
        try:
            for line in self.exec_log.read_text(errors="replace").splitlines():
                p = line.split()
                if len(p) >= 3:
                    (starts if p[0] == "START" else ends)[(p[1], p[2])] += 1
        except OSError:
            pass
        open_ = sum(1 for k in starts if starts[k] > ends.get(k, 0))
        return max(len(groups), open_, self.inflight_tasks())

    def inflight_tasks(self) -> int:
        """Agents whose in-flight list holds a task-bearing message: rounds the daemon has not
        ended yet (their CLI may have exited already; a crash now re-runs them)."""
        try:
            r = self.client(timeout=1.0)
            n = 0
            for key in r.scan_iter(match="tt:*:tinytownd:inflight:*", count=1000):
                if any('"task_assign"' in m or '"type":"task"' in m
                       for m in r.lrange(key, 0, -1)):
                    n += 1
            return n
        except (redis.RedisError, OSError):
            return 0

    def ended(self) -> int:
        try:
            return sum(1 for line in self.exec_log.read_text(errors="replace").splitlines()
                       if line.startswith("END "))
        except OSError:
            return 0

    def states(self, tids) -> dict[str, str | None]:
        r = self.r
        p = r.pipeline(transaction=False)
        for t in tids:
            p.hget(self.keys.task(t), "state")
        out = {}
        try:
            vals = p.execute(raise_on_error=False)
        except redis.RedisError:
            return {t: None for t in tids}
        for t, v in zip(tids, vals):
            out[t] = None if isinstance(v, Exception) else v
        return out

    def wait_terminal(self, tids, timeout: float) -> bool:
        def done():
            try:
                st = self.states(tids)
            except redis.RedisError:
                return False
            return all(v in TERMINAL for v in st.values())
        return bool(wait_until(done, timeout, 0.2))

    def _queued_anywhere(self) -> str:
        """Every queue's contents as one text (to find task ids still somewhere)."""
        r, k = self.r, self.keys
        parts = []
        try:
            for pat in ("inbox", "urgent"):
                for key in r.scan_iter(match=k.pattern(pat), count=1000):
                    if r.type(key) == "list":
                        parts += r.lrange(key, 0, -1)
            for key in r.scan_iter(match=f"tt:{TOWN}:tinytownd:inflight*", count=1000):
                if r.type(key) == "list":
                    parts += r.lrange(key, 0, -1)
            if r.type(k.backlog) == "list":
                parts += r.lrange(k.backlog, 0, -1)
            if r.type(k.delayed) == "zset":
                parts += r.zrange(k.delayed, 0, -1)
            for key in r.scan_iter(match=k.pattern("agent"), count=1000):
                if r.type(key) == "hash":
                    parts.append(r.hget(key, "current_task") or "")
        except redis.RedisError as e:
            parts.append(f"<redis error {e}>")
        return "\n".join(parts)

    def measure(self, tids) -> None:
        """Add task outcomes and executions of `tids` to the result."""
        res = self.result
        try:
            st = self.states(tids)
            anywhere = self._queued_anywhere()
        except redis.RedisError as e:
            res.note(f"cannot read task states: {e}")
            st, anywhere = {t: None for t in tids}, ""
        lost, stuck = [], []
        for t, s in st.items():
            if s == "completed":
                res.completed += 1
            elif s in ("failed", "cancelled"):
                res.failed += 1
            elif s is not None and t in anywhere:
                stuck.append((t, s))
            else:
                lost.append((t, s))
        res.lost += len(lost)
        res.stuck += len(stuck)
        if lost:
            descr = []
            for t, s in lost[:3]:
                try:
                    h = self.r.hmget(self.keys.task(t), "description", "assigned_to")
                except redis.RedisError:
                    h = [None, None]
                descr.append((t, s, h[0], h[1]))
            res.note(f"lost (not terminal, in no queue): {len(lost)}, e.g. (task, state, "
                     f"description, assigned_to) {descr}")
        if stuck:
            res.note(f"stuck (queued/running after the deadline): {len(stuck)}, e.g. {stuck[:3]}")
        execs = self.executions()
        dups = {t: n for t, n in execs.items() if t in st and n > 1}
        res.duplicates += len(dups)
        res.extra_execs += sum(n - 1 for n in dups.values())
        if dups:
            res.note(f"executed more than once: {len(dups)} task(s), "
                     f"max {max(dups.values())} times")

    def inject_crash(self, fn) -> None:
        """Record the rounds in flight, then run the crash `fn`."""
        n = self.running_rounds()
        self.result.inflight_at_crash += n
        self.result.faults += 1
        fn()

    def collect(self) -> None:
        """Crashes and hangs the monitor saw, and error lines of the daemon's log."""
        res = self.result
        for m in self.monitors:
            res.hangs += m.hang_episodes
            if m.hang_longest_s:
                res.note(f"longest unanswered status: {m.hang_longest_s:.1f}s")
            res.crashes += len(m.unexpected_exits)
            for e in m.unexpected_exits:
                res.note(e)
            restarts = sum(m.restarts.values())
            res.crashes += restarts
            if restarts:
                per = collections.Counter()
                for (_pid, name), n in m.restarts.items():
                    per[name] += n
                res.note(f"service restarts: {dict(per)}; last errors: "
                         f"{ {k: v[:160] for k, v in m.service_errors.items()} }")
            if m.failed_services:
                res.note(f"services in state failed: {sorted(m.failed_services)}")
        self.monitors = []
        worker_crashes, errors = self.log_findings()
        res.crashes += worker_crashes
        for e in errors[:8]:
            res.note(f"log: {e}")

    def log_findings(self) -> tuple[int, list[str]]:
        """(agent worker crashes, distinct error lines) from the daemon's JSON log."""
        crashes, seen = 0, []
        for path in (self.root / "stdout.log", self.root / "logs" / "tinytownd.log"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("event") == "agent worker crashed; restarting":
                    crashes += 1
                if j.get("level") in ("error", "critical"):
                    exc = j.get("exception") or ""
                    if isinstance(exc, list) and exc and isinstance(exc[-1], dict):
                        exc = f"{exc[-1].get('exc_type')}: {exc[-1].get('exc_value')}"
                    elif not isinstance(exc, str):
                        exc = json.dumps(exc)[-300:]
                    last = exc.strip().splitlines()[-1] if exc.strip() else ""
                    text = f"{j.get('event')}: {j.get('error') or ''} {last}".strip()
                    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", text)
                    if text not in seen:
                        seen.append(text[:300])
        return crashes, seen

    def deadletters(self) -> list[dict]:
        out = []
        try:
            if self.r.type(self.keys.deadletter) != "list":
                return out
            raw = self.client(decode=False).lrange(self.keys.deadletter, 0, -1)
        except redis.RedisError:
            return out
        for b in raw:
            try:
                out.append(json.loads(b.decode("utf-8", "replace")))
            except ValueError:
                out.append({"unparsable": b[:200]})
        return out


class _NullLog:
    def __getattr__(self, name):
        return lambda *a, **k: None
