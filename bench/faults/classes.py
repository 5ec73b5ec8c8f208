"""The fault classes. Each is `fn(trial)`: it builds its sites (real daemons), injects its fault,
measures into `trial.result`, and returns; the runner stops every site and collects crashes and
hangs afterwards (run.py worker()).

Sizes come from `trial.pick(quick, full)`.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable


from . import harness
from .harness import Site, Trial, tail_text, tt, wait_until
from tests.support.helpers import RedisServer


@dataclass
class Spec:
    fn: Callable[[Trial], None]
    doc: str
    trials_quick: int = 1
    trials_full: int = 3
    budget_quick: float = 60.0
    budget_full: float = 240.0

    def trials(self, quick: bool) -> int:
        return self.trials_quick if quick else self.trials_full

    def budget(self, quick: bool) -> float:
        return self.budget_quick if quick else self.budget_full


CLASSES: dict[str, Spec] = {}


def fault(name: str, doc: str, **kw):
    def deco(fn):
        CLASSES[name] = Spec(fn, doc, **kw)
        return fn
    return deco


def _settle(trial: Trial, site: Site, tids, *, quick_s=25.0, full_s=60.0) -> None:
    """The fault is gone: give the tasks a deadline to become terminal, then measure."""
    site.wait_terminal(tids, min(trial.pick(quick_s, full_s), max(5.0, trial.budget.left() - 20)))
    site.measure(tids)


def _after_ends(site: Site, n: int, timeout: float = 30.0, busy: int = 2) -> None:
    """Until the agents have finished n executions and at least `busy` rounds run (a fault
    injected then hits rounds in flight)."""
    wait_until(lambda: site.ended() >= n, timeout, 0.05)
    wait_until(lambda: site.running_rounds() >= busy, 3.0, 0.02)


# ============================================================================= crashes
@fault("kill-daemon", "kill -9 of the daemon under load (twice in a full trial), then restart it",
       trials_full=3, budget_quick=60)
def kill_daemon(trial: Trial) -> None:
    site = trial.site(agents=3, sleep=trial.pick(0.3, 0.4)).start()
    n, kills = trial.pick(15, 40), trial.pick(1, 2)
    tids = site.submit(n)
    for k in range(kills):
        _after_ends(site, (k + 1) * n // (kills + 2))
        site.inject_crash(site.kill9)
        time.sleep(0.5)
        orphans = site.running_rounds()
        if orphans:
            site.result.note(f"{orphans} agent CLI(s) still running 0.5 s after the daemon's "
                             "kill -9 (they finish on their own)")
        site.start()
    _settle(trial, site, tids)


@fault("kill-redis", "kill -9 of the owned redis-server child under load (the daemon restarts it)",
       trials_full=3, budget_quick=60)
def kill_redis(trial: Trial) -> None:
    site = trial.site(agents=3, sleep=0.3).start()
    n, kills = trial.pick(15, 40), trial.pick(1, 2)
    tids = site.submit(n)
    for k in range(kills):
        _after_ends(site, (k + 1) * n // (kills + 2))
        pid = site.redis_pid()
        site.inject_crash(lambda: os.kill(pid, signal.SIGKILL))
        back = wait_until(lambda: (site.status(5) or {}).get("redis", {}).get("ready")
                          and site.status(5)["redis"].get("pid") != pid, 30, 0.2)
        site.result.check(bool(back), "the daemon restarted its redis-server within 30 s")
    _settle(trial, site, tids)


BATCH_FILE = """agent_clis:
  fa: {{command: "sh {agent}", timeout_s: 30, max_attempts: 3,
        env: {{FA_LOG: "{log}", FA_SLEEP: "{sleep}"}}}}
agents: [{{name: b, role: worker, cli: fa, count: 3}}]
tasks:
{tasks}
"""


@fault("kill-batch", "kill -9 of an embedded `tinytownd batch` under load, then --resume",
       trials_full=3, budget_quick=70)
def kill_batch(trial: Trial) -> None:
    res = trial.result
    bdir, summ = trial.dir / "bd", trial.dir / "summary.json"
    # not started: its agent script, exec log, and a client of the batch's redis (in-flight count)
    probe = Site(trial, "batch", agents=1, redis={"url": f"unix://{bdir / 'redis.sock'}"})
    n = trial.pick(15, 40)
    bf = trial.dir / "b.yaml"
    bf.write_text(BATCH_FILE.format(agent=probe.agent_path, log=probe.exec_log, sleep=0.3,
                                    tasks="\n".join(f"  - {{id: t{i}, description: task {i}}}"
                                                    for i in range(n))))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TINYTOWND_CONFIG")}
    out = open(trial.dir / "batch1.log", "wb")
    p = subprocess.Popen(harness.tinytownd_cmd() + ["batch", str(bf), "--id", "fb", "--dir",
                                                    str(bdir), "--progress", "json"],
                         cwd=trial.dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    res.submitted += n
    _after_ends(probe, n // 3, 40)
    probe.inject_crash(lambda: (p.send_signal(signal.SIGKILL), p.wait(10)))
    out.close()
    time.sleep(0.5)
    t0 = time.monotonic()
    r = tt("batch", str(bf), "--resume", "fb", "--dir", bdir, "--progress", "none",
           "--summary", summ, cwd=trial.dir,
           timeout=min(trial.pick(40, 90), trial.budget.left() - 5))
    if r.returncode is None:
        res.hangs += 1
        res.note(f"--resume did not finish within {time.monotonic() - t0:.0f}s")
    elif r.returncode not in (0, 1):
        res.crashes += 1
        res.note(f"--resume exit {r.returncode}: {tail_text(r.stderr, 800)}")
    if harness.has_traceback(r.stderr, r.stdout):
        res.note("--resume printed a traceback: " + tail_text(r.stderr, 800))
    res.check(r.returncode == 0, f"--resume exits 0 (got {r.returncode})")
    try:
        s = json.loads(summ.read_text())
    except (OSError, ValueError):
        res.note("no summary written by --resume")
        res.stuck += n
        return
    tids = {}
    for t in s.get("tasks", []):
        st = t.get("state")
        if st == "completed":
            res.completed += 1
        elif st in ("failed", "cancelled"):
            res.failed += 1
        elif t.get("task_id"):
            res.stuck += 1
        else:
            res.lost += 1
        if t.get("task_id"):
            tids[t["task_id"]] = t.get("id")
    missing = n - len(s.get("tasks", []))
    if missing > 0:
        res.lost += missing
        res.note(f"{missing} file task(s) missing from the summary")
    execs = probe.executions()
    dups = {t: c for t, c in execs.items() if t in tids and c > 1}
    res.duplicates += len(dups)
    res.extra_execs += sum(c - 1 for c in dups.values())
    if dups:
        res.note(f"executed more than once: {sorted(tids[t] for t in dups)}")


# ============================================================================= redis
@fault("redis-freeze", "SIGSTOP the owned redis-server for N s under load, then SIGCONT",
       trials_full=3, budget_quick=60)
def redis_freeze(trial: Trial) -> None:
    site = trial.site(agents=3, sleep=0.3).start()
    n, secs = trial.pick(15, 40), trial.pick(4.0, 8.0)
    tids = site.submit(n)
    _after_ends(site, n // 3)
    pid = site.redis_pid()
    site.result.note(f"redis-server frozen for {secs:g}s (lease_ttl_s 3)")
    site.inject_crash(lambda: os.kill(pid, signal.SIGSTOP))
    try:
        time.sleep(secs)
    finally:
        os.kill(pid, signal.SIGCONT)
    _settle(trial, site, tids)


@fault("redis-outage", "external Redis (AOF on) killed for N s under load, then restarted",
       trials_full=3, budget_quick=60)
def redis_outage(trial: Trial) -> None:
    srv = RedisServer(trial.dir / "ext", extra=["--appendonly", "yes", "--appendfsync",
                                                "everysec"])
    srv.start()
    try:
        site = trial.site(agents=3, sleep=0.3, redis={"url": srv.url}).start()
        n, secs = trial.pick(15, 40), trial.pick(3.0, 8.0)
        tids = site.submit(n)
        _after_ends(site, n // 3)
        site.result.note(f"external redis down for {secs:g}s")
        site.inject_crash(srv.stop)
        time.sleep(secs)
        srv.start()
        _settle(trial, site, tids)
        site.stop()
    finally:
        srv.stop()


@fault("disk-full", "the town root on a small tmpfs, filled to ENOSPC under load, then freed",
       trials_full=2, budget_quick=70)
def disk_full(trial: Trial) -> None:
    res = trial.result
    mnt = trial.dir / "town"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {p.stderr.strip()}")
    site = trial.site(root=mnt, agents=3, sleep=0.3).start()
    n, secs = trial.pick(12, 30), trial.pick(5.0, 10.0)
    tids = site.submit(n)
    _after_ends(site, n // 3)
    filler = mnt / "filler"

    def fill():
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                chunk = b"\0" * size
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)
    try:
        site.inject_crash(fill)
        free = os.statvfs(mnt).f_bavail
        res.note(f"town root full ({free} blocks free) for {secs:g}s")
        more = site.submit(trial.pick(5, 10), prefix="during-full", retries_s=0)
        time.sleep(secs)
    finally:
        filler.unlink(missing_ok=True)
    later = site.submit(trial.pick(5, 10), prefix="after-full", retries_s=10)
    _settle(trial, site, tids + more + later)
    st = site.status(5)
    res.check(st is not None, "status answers after the disk was freed")


@fault("redis-oom", "owned redis-server with maxmemory; filled to OOM under load, then freed",
       trials_full=2, budget_quick=60)
def redis_oom(trial: Trial) -> None:
    res = trial.result
    site = trial.site(agents=3, sleep=0.3, redis={"maxmemory": "16mb"}).start()
    n, secs = trial.pick(12, 30), trial.pick(4.0, 8.0)
    tids = site.submit(n)
    _after_ends(site, n // 3)
    c = site.client(decode=False)
    filled = [0]

    def fill():
        i = 0
        while i < 10000:
            try:
                c.set(f"ballast:{i}", b"x" * 65536)
            except Exception as e:
                res.note(f"ballast stopped after {i} keys: {str(e)[:120]}")
                break
            i += 1
        filled[0] = i
    site.inject_crash(fill)
    more = site.submit(trial.pick(5, 10), prefix="during-oom", retries_s=0)
    time.sleep(secs)
    for i in range(0, filled[0] + 1, 500):
        c.delete(*[f"ballast:{j}" for j in range(i, min(i + 500, filled[0] + 1))])
    later = site.submit(trial.pick(5, 10), prefix="after-oom", retries_s=10)
    _settle(trial, site, tids + more + later)


# ============================================================================= control socket
def _conv(path, payload: bytes, timeout: float = 5.0) -> tuple[str, dict | None]:
    """Send `payload` on a fresh connection; ('reply', obj) / ('closed', None) / ('timeout', None)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return ("closed", None) if not buf else ("partial", None)
            buf += chunk
        try:   # (a generated line may hold a newline: two requests, two replies)
            return "reply", json.loads(buf.split(b"\n", 1)[0])
        except ValueError:
            return "garbled", None
    except (socket.timeout, TimeoutError):
        return "timeout", None
    finally:
        s.close()


@fault("control-abuse", "control socket: generated garbage, a 10 MB line, 500 idle connections, "
       "another uid", trials_full=2, budget_quick=90, budget_full=180)
def control_abuse(trial: Trial) -> None:
    from hypothesis import HealthCheck, Phase, example, given, settings
    from . import strategies as S

    res = trial.result
    os.chmod(trial.dir, 0o755)
    site = trial.site(agents=2, sleep=0.1).start()
    os.chmod(site.root, 0o755)
    sock = site.d.control_sock

    # 1. generated garbage lines
    outcomes = []

    @settings(max_examples=trial.pick(25, 150), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @example(S._deep(100_000, "list"))
    @example(b"\xff\xfe")
    @example(b"")
    @example(b'{"cmd": "status", "args": [1]}')
    @given(S.control_lines())
    def garbage(line):
        res.bad_inputs += 1
        if not line.strip():     # a blank line is skipped by the protocol: the next one answers
            how, reply = _conv(sock, line + b"\n" + b'{"cmd": "ping"}\n')
            ok = how == "reply" and isinstance(reply, dict) and reply.get("pong") is True
        else:
            how, reply = _conv(sock, line + b"\n")
            ok = how == "reply" and isinstance(reply, dict) and (
                reply.get("ok") is True or (reply.get("code") and reply.get("error")))
        if how == "timeout":
            res.hangs += 1
        if ok:
            res.bad_handled += 1
        else:
            outcomes.append((how, line[:80]))
    garbage()
    if outcomes:
        res.note(f"garbage lines without an error reply: {len(outcomes)}, e.g. {outcomes[:3]}")
    # 2. a 10 MB line
    res.bad_inputs += 1
    how, reply = _conv(sock, b'{"cmd": "ping", "pad": "' + b"x" * (10 << 20) + b'"}\n', 20)
    if how == "reply" and reply and reply.get("code") == "too_large":
        res.bad_handled += 1
    else:
        res.note(f"10 MB line: {how} {reply}")
    res.check(site.status() is not None, "status answers after the 10 MB line")
    # 3. 500 idle connections while agents work
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    conns = []
    try:
        for _ in range(500):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            end = time.monotonic() + 10
            while True:
                try:
                    s.connect(str(sock))
                    break
                except BlockingIOError:      # the listen backlog is full: accept is behind
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.01)
            conns.append(s)
        tids = site.submit(trial.pick(10, 30))
        t0 = time.monotonic()
        answered = 0
        for _ in range(5):
            if site.status() is not None:
                answered += 1
            time.sleep(0.2)
        res.check(answered == 5, f"status answers with 500 idle connections open ({answered}/5)")
        done = site.wait_terminal(tids, 30)
        res.check(done, f"agents complete their tasks with 500 idle connections open "
                        f"({time.monotonic() - t0:.1f}s)")
        site.measure(tids)
    finally:
        for s in conns:
            s.close()
    # 4. another uid: the socket is 0600, so connect() is refused
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for label, mode in (("socket 0600 (connect refused)", None),
                        ("socket 0666 (SO_PEERCRED refusal)", 0o666)):
        if mode is not None:
            os.chmod(sock, mode)
        res.bad_inputs += 1
        p = harness.run(nobody + harness.tinytownd_cmd() + ["status", "-c", str(site.d.cfg_path)],
                        timeout=20, env={"HOME": "/nonexistent"})
        err = (p.stderr or b"").decode(errors="replace")
        ok = p.returncode == 77 and "permission denied" in err.lower() and \
            not harness.has_traceback(err)
        if ok:
            res.bad_handled += 1
        else:
            res.note(f"other uid, {label}: exit {p.returncode}, stderr {err.strip()[-300:]!r}")
        if mode is not None:
            os.chmod(sock, 0o600)
    res.check(site.status() is not None, "status answers at the end")



# The other classes live beside this module; importing them registers them (the order is
# the table's order).
from . import config_fuzz  # noqa: E402,F401
from . import cli_classes  # noqa: E402,F401
from . import poison_classes  # noqa: E402,F401
