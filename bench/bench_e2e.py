#!/usr/bin/env python3
"""End-to-end batch benchmark: N jobs whose work is one `true` subprocess, W parallel workers.

    python bench/bench_e2e.py floor     [-n 5000] [-w 8] [--sh]
    python bench/bench_e2e.py rq        [-n 5000] [-w 8]
    python bench/bench_e2e.py huey      [-n 5000] [-w 8]
    python bench/bench_e2e.py tinytownd [-n 5000] [-w 8] [--appendfsync everysec|always|off]

Each prints one JSON line with `tasks_per_s` = N / (time from the first enqueue until the last job
finished), workers already started and idle when the clock starts (their start-up is reported
separately as `startup_s`). Every system gets its own private redis-server on a unix socket in a
temp dir (AOF off unless --appendfsync), stopped at the end.

  floor      a bare gevent loop: W greenlets run `true` N times (gevent.subprocess) — the
             fork/exec floor; with --sh each is `sh -c true`, as agent CLIs run.
  rq         RQ 3 SimpleWorker × W processes (`rq worker -w rq.worker.SimpleWorker`), each job
             `subprocess.run(["true"])`; jobs enqueued with enqueue_many (pipelined).
  huey       huey consumer `-k greenlet -w W` (monkey-patched, via ../shared/baseline/
             peer_huey_consumer.py), each task `subprocess.run(["true"])`.
  tinytownd  `tinytownd batch` (embedded: its own redis-server child, W agents, CLI `true`);
             the rate is the batch's own wall time (submission → last task terminal), and the
             command's total wall time (including start-up and shutdown) is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)                     # tests.support (servers, process helpers)
BIN = os.path.dirname(sys.executable)
BASELINE = os.environ.get("TT_BASELINE_DIR", os.path.join(os.path.dirname(ROOT), "shared", "baseline"))


from tests.support.helpers import stop_process  # noqa: E402


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


# ----------------------------------------------------------------------------- floor
def bench_floor(n: int, w: int, sh: bool) -> dict:
    code = r"""
import sys, time, json
from gevent import monkey; monkey.patch_all()
import gevent, gevent.subprocess as sp
n, w, sh = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
cmd = ["sh", "-c", "true"] if sh else ["true"]
left = [n]
def worker():
    while left[0] > 0:
        left[0] -= 1
        p = sp.Popen(cmd, stdin=sp.DEVNULL)
        if p.wait() != 0:
            raise SystemExit("true failed")
t0 = time.perf_counter()
gevent.joinall([gevent.spawn(worker) for _ in range(w)], raise_error=True)
dt = time.perf_counter() - t0
print(json.dumps({"secs": dt}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(n), str(w), "1" if sh else "0"],
                         check=True, capture_output=True, text=True).stdout
    dt = json.loads(out.strip().splitlines()[-1])["secs"]
    return emit({"system": "floor_sh" if sh else "floor", "n": n, "workers": w,
                 "secs": round(dt, 3), "tasks_per_s": round(n / dt, 1),
                 "cmd": ("sh -c true" if sh else "true") + f" x{n}, {w} greenlets"})


def bench_spawn(n: int, w: int) -> dict:
    """The floor with posix_spawn + a libev child watcher (see peers/spawn_probe.py)."""
    code = r"""
import sys, time, json, os
sys.path.insert(0, sys.argv[3])
from peers.spawn_probe import Spawned, loop
env = dict(os.environ)
def one():
    assert Spawned(os.posix_spawn("/bin/true", ["true"], env)).wait() == 0
print(json.dumps({"per_s": loop(int(sys.argv[1]), int(sys.argv[2]), one)}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(n), str(w), HERE], check=True,
                         capture_output=True, text=True).stdout
    rate = json.loads(out.strip().splitlines()[-1])["per_s"]
    return emit({"system": "floor_posix_spawn", "n": n, "workers": w, "secs": round(n / rate, 3),
                 "tasks_per_s": round(rate, 1),
                 "cmd": f"os.posix_spawn(true) + libev child watcher x{n}, {w} greenlets"})


# ----------------------------------------------------------------------------- rq
def bench_rq(n: int, w: int) -> dict:
    from peers.lab import RedisLab
    from rq import Queue, Worker
    from rq.registry import FinishedJobRegistry

    with RedisLab(name="rq") as lab:
        r = lab.client()
        q = Queue("ttbench-e2e", connection=r)
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [os.path.join(BIN, "rq"), "worker", "-q", "-w", "rq.worker.SimpleWorker",
               "-u", lab.url, "ttbench-e2e"]
        t_start = time.perf_counter()
        procs = [subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL)
                 for _ in range(w)]
        try:
            deadline = time.monotonic() + 60
            while len(Worker.all(connection=r)) < w:
                if time.monotonic() > deadline:
                    raise SystemExit("rq workers did not start")
                time.sleep(0.02)
            startup = time.perf_counter() - t_start
            time.sleep(0.3)  # let every worker park in its BLPOP/BZPOPMIN
            from peers import jobs
            reg = FinishedJobRegistry(queue=q)
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                q.enqueue_many([Queue.prepare_data(jobs.run_true, result_ttl=3600)
                                for _ in range(min(1000, n - i))])
            t_enq = time.perf_counter() - t0
            deadline = time.monotonic() + 900
            while reg.count < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"rq: only {reg.count}/{n} finished")
                if any(p.poll() is not None for p in procs):
                    raise SystemExit("an rq worker died")
                time.sleep(0.02)
            dt = time.perf_counter() - t0
            rss = sum(rss_kib(p.pid) for p in procs)
            failed = len(q.failed_job_registry)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            for p in procs:
                p.wait(10)
    return emit({"system": "rq", "n": n, "workers": w, "secs": round(dt, 3),
                 "tasks_per_s": round(n / dt, 1), "enqueue_s": round(t_enq, 3),
                 "startup_s": round(startup, 3), "failed": failed,
                 "workers_rss_mib": round(rss / 1024, 1),
                 "cmd": f"{w} x rq worker -w rq.worker.SimpleWorker; enqueue_many(run_true)"})


# ----------------------------------------------------------------------------- huey
def bench_huey(n: int, w: int) -> dict:
    from peers.lab import RedisLab

    with RedisLab(name="huey") as lab:
        os.environ["TT_BENCH_REDIS_URL"] = lab.url
        import importlib
        from peers import jobs
        importlib.reload(jobs)
        h = jobs.huey
        h.flush()
        consumer = os.path.join(BASELINE, "peer_huey_consumer.py")
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, consumer, "peers.jobs.huey", "-w", str(w), "-k", "greenlet", "-q",
               "-C"]
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=HERE, env=env)
        try:
            # huey has no worker registry: probe with one task until its result appears
            h.flush()
            probe = jobs.huey_true()
            probe.get(blocking=True, timeout=60)
            startup = time.perf_counter() - t_start
            h.flush()
            time.sleep(0.3)
            t0 = time.perf_counter()
            results = [jobs.huey_true() for _ in range(n)]
            t_enq = time.perf_counter() - t0
            deadline = time.monotonic() + 900
            while h.result_count() < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"huey: only {h.result_count()}/{n} finished")
                if proc.poll() is not None:
                    raise SystemExit("huey consumer died")
                time.sleep(0.02)
            dt = time.perf_counter() - t0
            rss = rss_kib(proc.pid)
            del results
        finally:
            stop_process(proc, signal.SIGINT, 15)
    return emit({"system": "huey", "n": n, "workers": w, "secs": round(dt, 3),
                 "tasks_per_s": round(n / dt, 1), "enqueue_s": round(t_enq, 3),
                 "startup_s": round(startup, 3), "consumer_rss_mib": round(rss / 1024, 1),
                 "cmd": f"huey consumer -k greenlet -w {w}; huey_true() x{n}"})


# ----------------------------------------------------------------------------- tinytownd
def write_batch_file(path: str, n: int) -> None:
    with open(path, "w") as f:
        f.write("# generated by bench/bench_e2e.py\ntasks:\n")
        for i in range(n):
            f.write(f"  - {{id: t{i}, description: noop}}\n")


def bench_tinytownd(n: int, w: int, appendfsync: str = "everysec", profile: str | None = None) -> dict:
    tt = os.path.join(BIN, "tinytownd")
    with tempfile.TemporaryDirectory(prefix="ttb-tt-", dir="/tmp") as d:
        bf = os.path.join(d, "batch.yaml")
        write_batch_file(bf, n)
        summ = os.path.join(d, "summary.json")
        cmd = [tt, "batch", bf, "--dir", os.path.join(d, "b"), "--cli", "true", "--agents", str(w),
               "--progress", "none", "--summary", summ, "--appendfsync", appendfsync,
               "--id", "bench"]
        if profile:
            cmd = [os.path.join(BIN, "py-spy"), "record", "-o", profile, "-f", "speedscope",
                   "-r", "200", "--"] + cmd
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=d)
        total = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"tinytownd batch exit {p.returncode}: {p.stderr[-2000:]}"
                             f"{p.stdout[-2000:]}")
        s = json.load(open(summ))
    dt = s["wall_time_s"]
    return emit({"system": "tinytownd" + ("" if appendfsync == "everysec" else f"_aof_{appendfsync}"),
                 "n": n, "workers": w, "secs": round(dt, 3), "tasks_per_s": round(n / dt, 1),
                 "appendfsync": appendfsync, "command_wall_s": round(total, 3),
                 "completed": s["totals"]["completed"], "attempts_total": s.get("attempts_total"),
                 "submit_s": s.get("submit_s"),
                 "cmd": f"tinytownd batch FILE --cli true --agents {w} --appendfsync {appendfsync}"})


# ----------------------------------------------------------------------------- memory
MEMORY_CODE = r"""
import json, os, sys, time, tempfile, shutil
from gevent import monkey; monkey.patch_all()
import gevent
from tinytownd import config
from tinytownd.daemon.lifecycle import Daemon
n = int(sys.argv[1])
root = tempfile.mkdtemp(prefix="ttb-mem-", dir="/tmp")
try:
    data = {"town": {"name": "mem", "root": root},
            "redis": {"socket": "redis.sock", "appendonly": False, "save": ""},
            "logging": {"level": "warning", "file": "logs/daemon.log"},
            "http": {"listen": None},
            "agent_clis": {"t": {"command": "true"}},
            "agents": [{"name": "a", "cli": "t", "count": n}] if n else []}
    cfg = config.from_dict(data, os.path.join(root, "cfg.yaml"), env={})
    d = Daemon(cfg, install_signals=False)
    t0 = time.monotonic()
    d.start()
    g = gevent.spawn(d.run)
    r = d.ctx.clients.cmd
    deadline = time.monotonic() + 60
    while int(r.info("clients")["blocked_clients"]) < n and time.monotonic() < deadline:
        gevent.sleep(0.05)
    t_idle = time.monotonic() - t0
    gevent.sleep(1.0)
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    ci = r.info("clients")
    mem = r.info("memory")["used_memory"]
    out = {"agents": n, "rss_kib": rss, "connected_clients": int(ci["connected_clients"]),
           "blocked_clients": int(ci["blocked_clients"]), "redis_used_memory": mem,
           "start_to_all_idle_s": round(t_idle, 3)}
    d.request_stop(graceful=True)
    g.join(30)
    print(json.dumps(out), flush=True)
finally:
    shutil.rmtree(root, ignore_errors=True)
"""


def bench_memory(n_small: int = 1, n_big: int = 201) -> dict:
    rows = []
    for n in (n_small, n_big):
        out = subprocess.run([sys.executable, "-c", MEMORY_CODE, str(n)], check=True,
                             capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    a, b = rows
    per = (b["rss_kib"] - a["rss_kib"]) / (b["agents"] - a["agents"])
    return emit({"system": "memory", "agents_small": a["agents"], "agents_big": b["agents"],
                 "rss_mib_small": round(a["rss_kib"] / 1024, 1),
                 "rss_mib_big": round(b["rss_kib"] / 1024, 1),
                 "rss_kib_per_idle_agent": round(per, 1),
                 "redis_connections_small": a["connected_clients"],
                 "redis_connections_big": b["connected_clients"],
                 "redis_connections_per_agent": round(
                     (b["connected_clients"] - a["connected_clients"]) / (b["agents"] - a["agents"]), 2),
                 "redis_kib_per_agent": round((b["redis_used_memory"] - a["redis_used_memory"])
                                              / 1024 / (b["agents"] - a["agents"]), 1),
                 "start_to_all_idle_s_big": b["start_to_all_idle_s"]})


# ----------------------------------------------------------------------------- cmdcount
CMDCOUNT_CODE = r"""
import json, os, sys, time, tempfile, shutil, resource
from gevent import monkey; monkey.patch_all()
import gevent
from pathlib import Path
from tinytownd.batch.agents import agent_sections, embedded_config, roster
from tinytownd.batch.dispatch import DispatchedBatch
from tinytownd.batch.file import parse
from tinytownd.batch.tasks import TaskBatch
from tinytownd import logs
from tinytownd.daemon.lifecycle import Daemon
n, w = int(sys.argv[1]), int(sys.argv[2])
variant = sys.argv[3]      # claim | dispatch | dispatch+spawn
if variant.endswith("+spawn"):   # what the posix_spawn proposal buys (bench/peers/spawn_probe.py)
    sys.path.insert(0, sys.argv[4])
    from peers import spawn_probe
    from tinytownd.runtime import runner
    runner.run = spawn_probe.run_compatible
root = Path(tempfile.mkdtemp(prefix="ttb-cc-", dir="/tmp"))
try:
    bf = parse({"tasks": [{"id": f"t{i}", "description": "noop"} for i in range(n)]}, "gen")
    clis, agents = agent_sections(bf, agents=w, cli="true")
    cfg = embedded_config(bf, root, clis, agents)
    import dataclasses
    if variant == "claim":   # the runtime's backlog claiming instead of the batch dispatcher
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, backlog_claim=True))
    if len(sys.argv) > 5 and sys.argv[5]:   # runtime.task_events (else the default)
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                  task_events=sys.argv[5]))
    d = Daemon(cfg, install_signals=False)
    d.start()
    g = gevent.spawn(d.run)
    r = d.ctx.clients.cmd
    gevent.sleep(0.5)
    r.config_resetstat()
    ru0 = resource.getrusage(resource.RUSAGE_SELF); ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    th0 = time.thread_time()
    srv0 = r.info("cpu")
    if variant == "claim":
        batch = TaskBatch(bf, "cc", r, d.ctx.keys)
    else:
        batch = DispatchedBatch(bf, "cc", r, d.ctx.keys, roster=roster(cfg), link_meta=False)
        batch.wait_agents()
    batch.town.task_events = cfg.runtime.task_events
    t0 = time.monotonic()
    batch.subscribe(); batch.write_meta(); batch.submit()
    if variant != "claim":
        batch.start_dispatch(fresh=True)
    assert batch.follow()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    th1 = time.thread_time()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv1 = r.info("cpu")
    stats = r.info("commandstats")
    total = sum(v["calls"] for v in stats.values())
    per = {k.replace("cmdstat_", ""): round(v["calls"] / n, 2) for k, v in
           sorted(stats.items(), key=lambda kv: -kv[1]["calls"]) if v["calls"] / n >= 0.05}
    us = {k.replace("cmdstat_", ""): round(v["usec"] / n, 1) for k, v in stats.items()
          if v["usec"] / n >= 5}
    batch.close()
    d.request_stop(graceful=True); g.join(30)
    out = {"n": n, "workers": w, "task_events": getattr(cfg.runtime, "task_events", "lifecycle"),
           "wall_s": round(wall, 3), "tasks_per_s": round(n / wall, 1),
           "redis_cmds_per_task": round(total / n, 1), "per_task": per,
           "redis_usec_per_task_by_cmd": us,
           "py_cpu_ms_per_task": round(((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / n * 1000, 2),
           "cli_cpu_ms_per_task": round(((ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)) / n * 1000, 3),
           "loop_thread_cpu_ms_per_task": round((th1 - th0) / n * 1000, 3),
           "py_user_ms_per_task": round((ru1.ru_utime - ru0.ru_utime) / n * 1000, 2),
           "py_sys_ms_per_task": round((ru1.ru_stime - ru0.ru_stime) / n * 1000, 2),
           "redis_cpu_ms_per_task": round(((srv1["used_cpu_user"] + srv1["used_cpu_sys"]) - (srv0["used_cpu_user"] + srv0["used_cpu_sys"])) / n * 1000, 2)}
    print(json.dumps(out), flush=True)
finally:
    shutil.rmtree(root, ignore_errors=True)
"""


def bench_cmdcount(n: int, w: int, variant: str = "dispatch", task_events: str = "") -> dict:
    """In-process embedded batch, with Redis command and CPU accounting per task.

    variant: `dispatch` = as shipped (the batch hands tasks to agents, prefetch 2);
    `claim` = the runtime's backlog claiming instead; `dispatch+spawn` = as shipped with
    tinytownd.runner.run replaced by the posix_spawn proposal (bench/peers/spawn_probe.py)."""
    out = subprocess.run([sys.executable, "-c", CMDCOUNT_CODE, str(n), str(w), variant,
                          HERE, task_events], check=True, capture_output=True, text=True,
                         cwd=ROOT).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return emit({"system": f"tinytownd_cost[{variant}]", **d})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("system", choices=["floor", "spawn", "rq", "huey", "tinytownd", "memory",
                                          "cmdcount"])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--sh", action="store_true", help="floor: sh -c true")
    ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always", "off", "no"])
    ap.add_argument("--profile", metavar="OUT", help="tinytownd: record with py-spy into OUT")
    ap.add_argument("--variant", default="dispatch", choices=["dispatch", "claim", "dispatch+spawn"],
                    help="cmdcount: dispatch = as shipped; claim = the runtime's backlog claim "
                         "path; dispatch+spawn = runner.run replaced by the posix_spawn proposal")
    ap.add_argument("--task-events", default="", choices=["", "lifecycle", "terminal", "none"],
                    help="cmdcount: runtime.task_events (default: the config default)")
    a = ap.parse_args()
    if a.system == "floor":
        bench_floor(a.n, a.w, a.sh)
    elif a.system == "spawn":
        bench_spawn(a.n, a.w)
    elif a.system == "memory":
        bench_memory()
    elif a.system == "cmdcount":
        bench_cmdcount(a.n, a.w, a.variant, a.task_events)
    elif a.system == "rq":
        bench_rq(a.n, a.w)
    elif a.system == "huey":
        bench_huey(a.n, a.w)
    else:
        bench_tinytownd(a.n, a.w, a.appendfsync, a.profile)


if __name__ == "__main__":
    main()
