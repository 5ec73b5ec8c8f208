"""The fault suite's harness: a real daemon in a temp dir, an agent that counts its own executions,
load, a status monitor (hangs, crashes), and the measurement of what happened to every task.

No gevent here: the harness is a plain process that drives real `tinytownd` processes.

    site = Site(trial, agents=3)          # config + agent script in the trial dir
    site.start()                          # `tinytownd run`, monitor thread polling status (2 s)
    tids = site.submit(20)                # backlog tasks (the store API `tinytownd backlog add` uses)
    ... inject a fault ...
    site.wait_terminal(tids, deadline_s)
    site.measure(tids)                    # completed / failed / lost / stuck / duplicates ...
    site.stop()                           # SIGTERM; a daemon that outlives its drain is a hang
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Daemons here do not open the HTTP listener (127.0.0.1:8474) unless their config sets http.listen:
# several run at once, and the machine is shared.
os.environ.setdefault("TINYTOWND_HTTP_LISTEN", "off")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from tests.support.helpers import tinytownd_cmd  # noqa: E402
from tinytownd.daemon import control  # noqa: E402

TOWN = "ft"
STATUS_TIMEOUT_S = 2.0        # a status that takes longer is a hang
TERMINAL = ("completed", "failed", "cancelled")

# The agent counts its own executions: one O_APPEND line per start and per end (`>>` opens the
# file with O_APPEND; each line is one write, so lines from concurrent agents never interleave).
AGENT_SH = r"""#!/bin/sh
# fault-suite agent: count this execution, read the prompt, work, report
echo "START ${TINYTOWN_TASK_ID:-none} $$" >> "$FA_LOG"
p="$(cat)"
case "$p" in
  *FAILONCE-*)   # fail the first attempt of this task (exercises the retry path)
    m=$(printf '%s' "$p" | grep -o 'FAILONCE-[0-9a-f-]*' | head -n 1)
    if [ ! -e "$FA_DIR/$m" ]; then
      : > "$FA_DIR/$m"; echo "FAIL ${TINYTOWN_TASK_ID:-none} $$" >> "$FA_LOG"
      echo "failing once"; exit 1
    fi;;
esac
sleep "${FA_SLEEP:-0.2}"
echo "END ${TINYTOWN_TASK_ID:-none} $$" >> "$FA_LOG"
echo "done ${TINYTOWN_TASK_ID:-none}" 2>/dev/null || true
exit 0
"""


# ----------------------------------------------------------------------------- results
@dataclass
class Result:
    """One trial of one fault class (rows add these up)."""
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0           # tasks the agent executed more than once
    extra_execs: int = 0          # executions beyond the first, over all tasks
    inflight_at_crash: int = 0    # rounds in flight at each injected crash, summed
    crashes: int = 0              # unexpected daemon exits + service restarts + worker crashes
    hangs: int = 0                # status unanswered > 2 s (episodes), SIGTERM ignored, deadline
    bad_inputs: int = 0           # hostile inputs injected
    bad_handled: int = 0          # ... refused or dead-lettered with a reason
    checks: int = 0               # class-specific expectations
    checks_ok: int = 0
    faults: int = 0               # faults injected
    seconds: float = 0.0
    error: str | None = None      # the harness itself failed (the class could not be measured)
    evidence: list = field(default_factory=list)

    def note(self, text: str) -> None:
        text = str(text)
        if text not in self.evidence and len(self.evidence) < 40:
            self.evidence.append(text[:600])

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if ok:
            self.checks_ok += 1
        else:
            self.note(f"FAILED CHECK: {what}")
        return ok

    def to_dict(self) -> dict:
        return asdict(self)


class Deadline:
    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def __bool__(self) -> bool:   # true while there is time left
        return time.monotonic() < self.at


def wait_until(pred, timeout: float, interval: float = 0.1):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            return v
        time.sleep(interval)


# ----------------------------------------------------------------------------- processes
def rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def procs_matching(text: str) -> list[tuple[int, int]]:
    """(pid, pgid) of live processes whose command line contains `text`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(
                "utf-8", "replace")
            if text in cmd and alive(int(d)):
                out.append((int(d), os.getpgid(int(d))))
        except OSError:
            pass
    return out


def run(cmd: list[str], *, timeout: float = 30, env: dict | None = None, input=None,
        cwd=None) -> subprocess.CompletedProcess:
    """A command with a timeout; a timeout comes back as returncode None (never raises)."""
    full = {**os.environ, **(env or {})}
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=full, input=input,
                              cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, None, e.stdout or b"", e.stderr or b"")


def tt(*args, timeout: float = 30, env: dict | None = None, input=None, cwd=None):
    return run(tinytownd_cmd() + [str(a) for a in args], timeout=timeout, env=env, input=input,
               cwd=cwd)


def has_traceback(*texts) -> bool:
    for t in texts:
        if isinstance(t, bytes):
            t = t.decode("utf-8", "replace")
        if t and "Traceback (most recent call last)" in t:
            return True
    return False


def tail_text(b, n=400) -> str:
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    return (b or "").strip()[-n:]


# ----------------------------------------------------------------------------- the monitor
class Monitor(threading.Thread):
    """Polls `status` on the control socket every 0.5 s with a 2 s timeout: unanswered = a hang
    episode. Watches the daemon process: an exit nobody asked for is a crash. Keeps the
    supervisor's restart counters of every daemon process it saw."""

    def __init__(self, site: "Site"):
        super().__init__(daemon=True)
        self.site = site
        self.stop_evt = threading.Event()
        self.paused = threading.Event()
        self.hang_episodes = 0
        self.hang_longest_s = 0.0
        self._hanging_since: float | None = None
        self.unexpected_exits: list[str] = []
        self.restarts: dict[tuple[int, str], int] = {}
        self.failed_services: set[str] = set()
        self.service_errors: dict[str, str] = {}
        self.last_status: dict | None = None
        self.polls = 0
        self._seen_exit: set[int] = set()

    def run(self) -> None:
        while not self.stop_evt.wait(0.5):
            if self.paused.is_set():
                self._hanging_since = None
                continue
            self.poll_once()

    def poll_once(self) -> None:
        site = self.site
        proc = site.d.proc
        if proc is not None and proc.poll() is not None and proc.pid not in site.downed:
            if proc.pid not in self._seen_exit:
                self._seen_exit.add(proc.pid)
                err = (site.root / "stderr.log").read_text(errors="replace")[-800:] \
                    if (site.root / "stderr.log").exists() else ""
                self.unexpected_exits.append(f"daemon pid {proc.pid} exited with "
                                             f"{proc.returncode}: {err.strip()[-400:]}")
            return
        if proc is None or proc.poll() is not None:
            return
        t0 = time.monotonic()
        try:
            st = control.request(site.d.control_sock, "status", timeout=STATUS_TIMEOUT_S)
            self.polls += 1
        except control.ControlError as e:
            if "no reply" in str(e) or "timed out" in str(e):
                self._hang(t0)
            return
        except (control.NotRunning, OSError, ValueError):
            return
        if self._hanging_since is not None:
            self.hang_longest_s = max(self.hang_longest_s, time.monotonic() - self._hanging_since)
            self._hanging_since = None
        if not st.get("ok", True):
            return
        self.last_status = st
        pid = st.get("pid")
        for name, det in (st.get("service_details") or {}).items():
            key = (pid, name)
            self.restarts[key] = max(self.restarts.get(key, 0), int(det.get("restarts") or 0))
            if det.get("state") == "failed":
                self.failed_services.add(name)
            if det.get("last_error"):
                self.service_errors[name] = det["last_error"]

    def _hang(self, t0: float) -> None:
        if self._hanging_since is None:
            self._hanging_since = t0
            self.hang_episodes += 1
            self.site.result.note(f"status unanswered within {STATUS_TIMEOUT_S:g}s at "
                                  f"t={time.monotonic() - self.site.t0:.1f}s")
        self.hang_longest_s = max(self.hang_longest_s, time.monotonic() - self._hanging_since)

    def finish(self) -> None:
        self.stop_evt.set()
        self.join(5)


# ----------------------------------------------------------------------------- trial
class Trial:
    """What a fault class gets: its own dir, its result, its size knobs."""

    def __init__(self, dir: Path, cls: str, index: int, quick: bool, budget_s: float):
        self.dir = Path(dir)
        self.cls = cls
        self.index = index
        self.quick = quick
        self.budget = Deadline(budget_s)
        self.result = Result()
        self.sites: list[Site] = []

    def log(self, msg: str) -> None:
        """A progress line (worker.log; its tail is kept when a trial overruns its deadline)."""
        print(f"[{time.strftime('%H:%M:%S')} {self.cls}] {msg}", file=sys.stderr, flush=True)

    def site(self, *a, **kw) -> Site:
        s = Site(self, *a, **kw)
        self.sites.append(s)
        return s

    def pick(self, quick, full):
        return quick if self.quick else full



# The site lives in town_site.py; imported last because it builds on everything above.
from .town_site import Site  # noqa: E402,F401
