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
import threading
import time
from dataclasses import dataclass
from typing import Callable

import yaml

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


# ============================================================================= config fuzz
@fault("config-fuzz", "generated/hostile config files through check-config and through the "
       "reload of a running daemon; count: 100000", trials_full=1, budget_quick=100,
       budget_full=420)
def config_fuzz(trial: Trial) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from . import strategies as S

    res = trial.result
    root = str(trial.dir / "cf")
    cfgf = trial.dir / "fuzz.yaml"
    agent_cmd = f"sh {trial.dir / 'agent.sh'}"

    def check_one(label: str, data: bytes) -> None:
        trial.log(f"check-config {label[:60]}")
        cfgf.write_bytes(data)
        res.bad_inputs += 1
        p = tt("check-config", "-c", cfgf, timeout=30, env={"REDIS_URL": "",
                                                           "TINYTOWND_CONFIG": ""})
        if p.returncode is None:
            res.hangs += 1
            res.note(f"check-config hung (30 s) on {label}")
        elif p.returncode in (0, 78) and not harness.has_traceback(p.stderr, p.stdout):
            res.bad_handled += 1
        else:
            res.note(f"check-config on {label}: exit {p.returncode}: "
                     f"{tail_text(p.stderr, 300)!r}")

    for label, data in S.hand_picked_configs(root, agent_cmd):
        check_one(label, data)
    for label, text in ((".nan", "runtime: {heartbeat_interval_s: .nan}"),
                        (".nan count", "agents: [{name: w, cli: claude, count: .nan}]"),
                        (".inf timeout", "agent_clis: {x: {command: 'true', timeout_s: .inf}}")):
        cfgf.write_text(f"town: {{name: ft, root: {root}}}\n{text}\n")
        p = tt("check-config", "-c", cfgf, timeout=30)
        res.check(p.returncode == 78, f"check-config refuses {label} for a number "
                                      f"(exit {p.returncode})")

    @settings(max_examples=trial.pick(10, 120), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(S.config_docs(root))
    def gen(data):
        check_one(f"generated {data[:60]!r}", data)
    gen()

    # --- through reload of a running daemon
    site = trial.site(agents=2, sleep=0.1).start()
    good = site.d.cfg_path.read_bytes()
    before = site.d.status()

    def reload_one(label: str, data: bytes) -> None:
        trial.log(f"reload {label[:60]}")
        site.d.cfg_path.write_bytes(data)
        res.bad_inputs += 1
        t0 = time.monotonic()
        p = tt("reload", "-c", site.d.cfg_path, timeout=60)
        took = time.monotonic() - t0
        st = site.status()
        handled = p.returncode in (0, 1, 78) and not harness.has_traceback(p.stderr, p.stdout) \
            and st is not None
        if p.returncode is None:
            res.hangs += 1
        if p.returncode == 78 and st is not None:
            handled = handled and st.get("reloads") == before.get("reloads")
        if handled:
            res.bad_handled += 1
        else:
            res.note(f"reload of {label}: exit {p.returncode} in {took:.1f}s, status "
                     f"{'answers' if st else 'UNANSWERED'}: {tail_text(p.stderr, 300)!r}")
        if p.returncode in (0, 1):       # it took (part of) it: go back to the good config
            site.d.cfg_path.write_bytes(good)
            tt("reload", "-c", site.d.cfg_path, timeout=60)
            before.update(site.d.status())

    base = yaml.safe_load(good)
    quick_set = ("empty file", "non-UTF-8 bytes", ".nan", "duplicate keys", "2 MB file",
                 "deep nesting", "socket path too long", "top level list")
    for label, data in S.hand_picked_configs(site.root, agent_cmd):
        if "count 100000" in label or (trial.quick and label not in quick_set):
            continue
        reload_one(label, data)

    @settings(max_examples=trial.pick(6, 60), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(S.config_dict(str(site.root)))
    def gen_reload(doc):
        merged = {**base, **{k: v for k, v in doc.items() if k != "town"}}
        reload_one(f"generated {str(doc)[:80]}", S._dump(merged))
    gen_reload()
    site.d.cfg_path.write_bytes(good)
    tids = site.submit(5)
    res.check(site.wait_terminal(tids, 20), "tasks complete after the reload fuzz")
    site.measure(tids)

    # --- count: 100000 on a running daemon (valid: 1..100000)
    trial.log("reload with count: 100000")
    huge = dict(base)
    huge["agents"] = [{"name": "w", "cli": "fa", "count": 2}, {"name": "x", "cli": "fa",
                                                                "count": 100000}]
    pid = site.daemon_pid()
    rss0 = harness.rss_kb(pid)
    site.d.cfg_path.write_text(yaml.safe_dump(huge))
    res.bad_inputs += 1
    box = {}

    limit = trial.pick(15.0, 90.0)

    def do_reload():
        box["p"] = tt("reload", "-c", site.d.cfg_path, timeout=limit)
    th = threading.Thread(target=do_reload, daemon=True)
    t0 = time.monotonic()
    th.start()
    peak, unanswered = rss0, 0
    while th.is_alive() and time.monotonic() - t0 < limit + 1:
        peak = max(peak, harness.rss_kb(pid))
        if site.status() is None:
            unanswered += 1
        if peak > 3 << 20:      # 3 GiB: stop before the machine suffers
            res.note("daemon RSS over 3 GiB during the count: 100000 reload; killed")
            site.kill9()
            break
        time.sleep(0.5)
    th.join(5)
    took = time.monotonic() - t0
    p = box.get("p")
    for _ in range(6):
        peak = max(peak, harness.rss_kb(pid))
        if site.status() is None:
            unanswered += 1
        time.sleep(0.5)
    grew = (peak - rss0) / 1024
    ok = p is not None and p.returncode is not None and took < 30 and grew < 512 and \
        unanswered == 0
    if ok:
        res.bad_handled += 1
    if trial.quick and site.daemon_pid():
        site.kill9()      # quick: the SIGTERM drain after this is measured by the full run only
    res.note(f"count: 100000 reload: exit {p.returncode if p else None} after {took:.1f}s, RSS "
             f"{rss0 // 1024} -> {peak // 1024} MiB, {unanswered} unanswered status polls: "
             f"{tail_text(p.stdout if p else b'', 200)!r} {tail_text(p.stderr if p else b'', 200)!r}")


# ============================================================================= agent CLIs
def _one_cli(trial: Trial, command: str, *, timeout_s=30, max_attempts=1, result_tail=4000):
    site = trial.site(agents=1, agent_clis={"bad": {"command": command, "timeout_s": timeout_s,
                                                    "max_attempts": max_attempts}},
                      agent_specs=[{"name": "w-1", "cli": "bad"}],
                      runtime={"result_tail_bytes": result_tail}).start()
    return site


def _task(site: Site, tid: str) -> dict:
    return site.r.hgetall(site.keys.task(tid)) or {}


@fault("cli-huge-output", "an agent CLI that prints 500 MB in one round (100 MB quick)",
       trials_full=1, budget_quick=60, budget_full=240)
def cli_huge_output(trial: Trial) -> None:
    res = trial.result
    mb = trial.pick(100, 500)
    site = _one_cli(trial, f"head -c {mb}000000 /dev/zero | tr '\\0' x; echo; echo finished",
                    timeout_s=200)
    tid = site.cli_assign("w-1", "print a lot")
    res.submitted += 1
    t0 = time.monotonic()
    site.wait_terminal([tid], trial.pick(40, 200))
    took = time.monotonic() - t0
    t = _task(site, tid)
    site.measure([tid])
    res.check(t.get("state") == "completed", f"the round completes (state {t.get('state')})")
    res.check(len(t.get("result", "")) <= 4100, f"the result is the tail only "
                                                 f"({len(t.get('result', ''))} chars)")
    logs = list((site.root / "logs").glob("w-1_round_*.log"))
    size = sum(p.stat().st_size for p in logs)
    res.note(f"{mb} MB printed in {took:.1f}s; round logs on disk: {len(logs)} file(s), "
             f"{size / 1e6:.1f} MB")
    res.check(size <= 64 << 20, f"the round log on disk is bounded (<= 64 MiB; it is "
                                f"{size / 1e6:.1f} MB)")
    pid = site.daemon_pid()
    res.check(harness.rss_kb(pid) < 400 << 10, f"daemon RSS stays small "
                                               f"({harness.rss_kb(pid) // 1024} MiB)")


@fault("cli-bg-child", "an agent CLI that leaves a background child sleeping",
       trials_full=2, budget_quick=45)
def cli_bg_child(trial: Trial) -> None:
    res = trial.result
    pidf = trial.dir / "child.pid"
    site = _one_cli(trial, f"sleep 300 & echo $! > {pidf}; echo started")
    tid = site.cli_assign("w-1", "leave a child")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    site.measure([tid])
    res.check(_task(site, tid).get("state") == "completed", "the round completes")
    try:
        child = int(pidf.read_text().strip())
    except (OSError, ValueError):
        child = None
    gone = wait_until(lambda: not harness.alive(child), 3.0) if child else False
    res.check(bool(gone), f"the background child (pid {child}) is gone after the round")


@fault("cli-ignore-term", "an agent CLI that ignores SIGTERM, with timeout_s 1",
       trials_full=2, budget_quick=45)
def cli_ignore_term(trial: Trial) -> None:
    res = trial.result
    pidf = trial.dir / "cli.pid"
    site = _one_cli(trial, f"trap '' TERM; echo $$ > {pidf}; while :; do sleep 0.2; done",
                    timeout_s=1)
    t0 = time.monotonic()
    tid = site.cli_assign("w-1", "ignore SIGTERM")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    took = time.monotonic() - t0
    site.measure([tid])
    t = _task(site, tid)
    res.check(t.get("state") == "failed" and "tim" in t.get("result", "").lower(),
              f"the task fails with a timeout reason ({t.get('state')}: "
              f"{t.get('result', '')[:100]!r})")
    res.check(took <= 1 + 3 + 4, f"killed within timeout + grace ({took:.1f}s)")
    try:
        pid = int(pidf.read_text().strip())
    except (OSError, ValueError):
        pid = None
    res.check(pid is not None and not harness.alive(pid), f"the CLI (pid {pid}) is gone")


@fault("cli-stdin-forever", "an agent CLI that reads stdin forever (timeout_s 1); and one "
       "that reads it to EOF", trials_full=2, budget_quick=45)
def cli_stdin_forever(trial: Trial) -> None:
    res = trial.result
    site = _one_cli(trial, "while :; do cat > /dev/null; sleep 0.05; done", timeout_s=1)
    t0 = time.monotonic()
    tid = site.cli_assign("w-1", "read forever")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    took = time.monotonic() - t0
    site.measure([tid])
    t = _task(site, tid)
    res.check(t.get("state") == "failed" and "tim" in t.get("result", "").lower(),
              f"the task fails with a timeout reason ({t.get('state')}: "
              f"{t.get('result', '')[:100]!r})")
    res.check(took <= 1 + 3 + 4, f"killed within timeout + grace ({took:.1f}s)")
    site.stop()
    site2 = trial.site("eof", agents=1, agent_clis={"cat": {"command": "cat; echo read-it",
                                                            "timeout_s": 10,
                                                            "max_attempts": 1}},
                       agent_specs=[{"name": "w-1", "cli": "cat"}]).start()
    tid = site2.town.assign(site2.aid("w-1"), "x" * 200_000)   # a prompt > a pipe buffer
    res.submitted += 1
    site2.wait_terminal([tid], 20)
    site2.measure([tid])
    res.check(_task(site2, tid).get("state") == "completed",
              "a CLI that reads a 200 kB prompt to EOF completes")


@fault("cli-missing", "the agent command does not exist (exit 127)", trials_full=2,
       budget_quick=45)
def cli_missing(trial: Trial) -> None:
    res = trial.result
    site = _one_cli(trial, f"/nonexistent/fa-agent-{os.getpid()} --print", max_attempts=2)
    tid = site.cli_assign("w-1", "run me")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    site.measure([tid])
    t = _task(site, tid)
    text = t.get("result", "")
    res.check(t.get("state") == "failed", f"the task is failed ({t.get('state')})")
    res.check("127" in text or "not found" in text.lower(),
              f"the failure names exit 127 / not found ({text[:160]!r})")
    dl = [e for e in site.deadletters() if e.get("task") == tid]
    res.check(bool(dl) and bool(dl[0].get("reason")),
              f"a dead-letter entry with a reason ({dl[:1]})")


# The poison classes live in poison.py (they share one driver).
from . import poison  # noqa: E402,F401  (registers the poison-* classes)
