#!/usr/bin/env python3
"""End-to-end benchmark: N jobs whose work is one `sh -c true`, W parallel workers.

    python bench/bench_e2e.py SYSTEM [-n 5000] [-w 8] [--appendfsync everysec|always|no|off]
                                     [--opt KEY=VALUE ...]

Each prints one JSON line with `tasks_per_s` = N / (time from the first enqueue until the last job
finished), workers already started and idle when the clock starts (their start-up is reported
separately as `startup_s`), the load average at the start and the end of the run, and the CPU
per task by part (`cpu_ms_per_task`, from /proc: bench/peers/proc.py). Every system gets its own
private redis-server on a unix socket in a temp dir, `save ""`, AOF with --appendfsync (the same
for tinytownd and the peers; default everysec, tinytownd's default; `off` = no AOF), stopped at
the end.

  tinytownd        `tinytownd batch FILE --cli true --agents W --appendfsync A`, embedded (its own
                   redis-server child, W agents, the batch dispatcher). The runtime runs every CLI
                   as `sh -c <command>`, so each task is one `sh -c true` (dash's builtin true).
                   Rate: the batch's own wall_time_s (submission -> last task terminal).
  dramatiq         dramatiq 2, RedisBroker: `dramatiq peers.jobs_dramatiq -p <cores> -t 4`
  dramatiq-gevent  the same under `dramatiq-gevent`
  celery           Celery 5: `celery worker -P prefork -c 8 --prefetch-multiplier 64`, acks_late,
                   --without-gossip/mingle/heartbeat, no result backend
  celery-gevent    the same with `-P gevent -c 8`
  rq               RQ: W x `rq worker -w rq.worker.SimpleWorker`, enqueue_many
  huey             huey: `huey_consumer -k thread -w W -n -C` (--opt k=process|greenlet)
  floor            a bare gevent loop: W greenlets run `sh -c true` N times with
                   gevent.subprocess (the fork/exec floor; --job true: `true` itself)
  spawn            the same loop with os.posix_spawn + a libev child watcher
                   (bench/peers/spawn_probe.py): the posix_spawn floor
  memory, cmdcount tinytownd's idle memory and its per-task Redis commands and CPU (in-process)

Peers (bench/peers/peer_*.py, run by bench/peers/harness.py) run the job `peers.jobs.job`:
`subprocess.run(["sh", "-c", "true"], check=True)`, then the job appends its completion time to
a file (one O_APPEND write); the clock stops at the largest time written, once N are in.
--opt sets a peer's option (see each peer module), e.g. `--opt t=8 --opt worker_timeout=100`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)                     # tests.support (servers, process helpers)
BIN = os.path.dirname(sys.executable)

from peers.proc import Snapshot, loadavg  # noqa: E402

JOBS = {"sh": ["sh", "-c", "true"], "true": ["true"]}


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


# ----------------------------------------------------------------------------- floors
def bench_floor(n: int, w: int, job: str = "sh") -> dict:
    code = r"""
import sys, time, json
from gevent import monkey; monkey.patch_all()
import gevent, gevent.subprocess as sp
n, w, cmd = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
left = [n]
def worker():
    while left[0] > 0:
        left[0] -= 1
        p = sp.Popen(cmd, stdin=sp.DEVNULL)
        if p.wait() != 0:
            raise SystemExit("job failed")
t0 = time.perf_counter()
gevent.joinall([gevent.spawn(worker) for _ in range(w)], raise_error=True)
dt = time.perf_counter() - t0
print(json.dumps({"secs": dt}))
"""
    load0 = loadavg()
    out = subprocess.run([sys.executable, "-c", code, str(n), str(w), json.dumps(JOBS[job])],
                         check=True, capture_output=True, text=True).stdout
    dt = json.loads(out.strip().splitlines()[-1])["secs"]
    return emit({"system": "floor" + ("" if job == "sh" else "_true"), "n": n, "workers": w,
                 "secs": round(dt, 3), "tasks_per_s": round(n / dt, 1), "load_start": load0,
                 "load_end": loadavg(),
                 "cmd": f"gevent.subprocess.Popen({' '.join(JOBS[job])}) x{n}, {w} greenlets"})


def bench_spawn(n: int, w: int, job: str = "sh", procs: int = 1) -> dict:
    """The floor with posix_spawn + a libev child watcher (see peers/spawn_probe.py). With
    `procs` > 1, that many such processes (w/procs greenlets and n/procs spawns each) told to go
    at once: the machine's spawn limit on all cores, not one loop's. The rate is n over the
    union of their windows (first start to last end)."""
    code = r"""
import sys, time, json, os, shutil
sys.path.insert(0, sys.argv[3])
from peers.spawn_probe import Spawned, loop
env = dict(os.environ)
argv = json.loads(sys.argv[4])
path = shutil.which(argv[0])
def one():
    assert Spawned(os.posix_spawn(path, argv, env)).wait() == 0
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
rate = loop(int(sys.argv[1]), int(sys.argv[2]), one)
print(json.dumps({"per_s": rate, "t0": t0, "t1": time.time()}))
"""
    load0 = loadavg()
    share_n, share_w = n // procs, max(1, w // procs)
    kids = [subprocess.Popen([sys.executable, "-c", code, str(share_n), str(share_w), HERE,
                              json.dumps(JOBS[job])], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    for k in kids:
        assert k.stdout.readline().strip() == "ready"
    for k in kids:
        k.stdin.write("go\n")
        k.stdin.flush()
    outs = []
    for k in kids:
        out, _ = k.communicate(timeout=600)
        if k.returncode != 0:
            raise SystemExit(f"spawn floor child exit {k.returncode}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    secs = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    rate = share_n * procs / secs
    suffix = ("" if job == "sh" else "_true") + ("" if procs == 1 else f"_x{procs}")
    return emit({"system": "floor_posix_spawn" + suffix, "n": share_n * procs, "workers": w,
                 "procs": procs, "secs": round(secs, 3), "tasks_per_s": round(rate, 1),
                 "per_proc_tasks_per_s": [round(o["per_s"], 1) for o in outs],
                 "load_start": load0, "load_end": loadavg(),
                 "cmd": f"os.posix_spawn({' '.join(JOBS[job])}) + libev child watcher x{n}, "
                        f"{w} greenlets" + ("" if procs == 1 else f" over {procs} processes")})


# ----------------------------------------------------------------------------- peers
def peer_makers() -> dict:
    from peers import peer_celery, peer_dramatiq, peer_huey, peer_rq
    return {"dramatiq": peer_dramatiq.make, "dramatiq-gevent": peer_dramatiq.make_gevent,
            "celery": peer_celery.make, "celery-gevent": peer_celery.make_gevent,
            "rq": peer_rq.make, "huey": peer_huey.make}


PEERS = ("dramatiq", "dramatiq-gevent", "celery", "celery-gevent", "rq", "huey")


def bench_peer(system: str, n: int, w: int, appendfsync: str, opts: dict) -> dict:
    from peers.harness import run_peer
    row = run_peer(peer_makers()[system], n=n, w=w, appendfsync=appendfsync, opts=opts)
    row["system"] = system
    return emit(row)


# ----------------------------------------------------------------------------- tinytownd
def write_batch_file(path: str, n: int) -> None:
    with open(path, "w") as f:
        f.write("# generated by bench/bench_e2e.py\ntasks:\n")
        for i in range(n):
            f.write(f"  - {{id: t{i}, description: noop}}\n")


def bench_tinytownd(n: int, w: int, appendfsync: str = "everysec", profile: str | None = None,
                    cli: str = "true") -> dict:
    """`tinytownd batch` as a user runs it. The CPU split comes from /proc over the window from
    the batch's first progress line (`--progress json`, written when it starts following) to its
    last one (every task terminal, before the embedded daemon stops): the daemon's main (loop)
    thread, its other threads (the spawn thread), the CLI children it reaped, its redis-server
    child; per task completed in that window."""
    tt = os.path.join(BIN, "tinytownd")
    with tempfile.TemporaryDirectory(prefix="ttb-tt-", dir="/tmp") as d:
        bf = os.path.join(d, "batch.yaml")
        write_batch_file(bf, n)
        summ = os.path.join(d, "summary.json")
        cmd = [tt, "batch", bf, "--dir", os.path.join(d, "b"), "--cli", cli, "--agents", str(w),
               "--progress", "json", "--summary", summ, "--appendfsync", appendfsync,
               "--id", "bench"]
        if profile:
            cmd = [os.path.join(BIN, "py-spy"), "record", "-o", profile, "-f", "speedscope",
                   "-r", "200", "--"] + cmd
        load0 = loadavg()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=d)
        err: list[str] = []
        te = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
        te.start()
        marks: list[tuple[int, Snapshot]] = []       # (done, snapshot) at first and last progress
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") != "batch.progress":
                continue
            if not marks or ev.get("done") == ev.get("total"):
                marks.append((ev["done"], Snapshot.take([p.pid])))
        p.wait()
        te.join(10)
        total = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"tinytownd batch exit {p.returncode}: {''.join(err)[-2000:]}")
        s = json.load(open(summ))
    dt = s["wall_time_s"]
    split = {}
    if len(marks) >= 2 and marks[-1][0] > marks[0][0]:
        c = marks[-1][1].minus(marks[0][1], marks[-1][0] - marks[0][0])
        split = {"loop_thread": c["main_thread_ms"], "other_threads": c["other_threads_ms"],
                 "cli_children": c["children_ms"], "redis": c["redis_ms"],
                 "window_tasks": marks[-1][0] - marks[0][0]}
    return emit({"system": "tinytownd" + ("" if appendfsync == "everysec" else f"_aof_{appendfsync}"),
                 "n": n, "workers": w, "secs": round(dt, 3), "tasks_per_s": round(n / dt, 1),
                 "appendfsync": appendfsync, "command_wall_s": round(total, 3),
                 "completed": s["totals"]["completed"], "attempts_total": s.get("attempts_total"),
                 "submit_s": s.get("submit_s"), "cpu_ms_per_task": split,
                 "load_start": load0, "load_end": loadavg(),
                 "cmd": f"tinytownd batch FILE --cli {cli} --agents {w} --appendfsync {appendfsync}"})


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
    ap.add_argument("system", choices=["floor", "spawn", "tinytownd", "memory", "cmdcount",
                                       *PEERS])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--job", default="sh", choices=sorted(JOBS),
                    help="floors: the command run per job (default sh = `sh -c true`)")
    ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always", "off", "no"],
                    help="AOF policy of every system's redis-server (off = no AOF)")
    ap.add_argument("--cli", default="true", help="tinytownd: the agent CLI (run as sh -c CLI)")
    ap.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a peer option (see bench/peers/peer_*.py)")
    ap.add_argument("--procs", type=int, default=1,
                    help="spawn: that many spawning processes at once (the machine's limit)")
    ap.add_argument("--profile", metavar="OUT", help="tinytownd: record with py-spy into OUT")
    ap.add_argument("--variant", default="dispatch", choices=["dispatch", "claim", "dispatch+spawn"],
                    help="cmdcount: dispatch = as shipped; claim = the runtime's backlog claim "
                         "path; dispatch+spawn = runner.run replaced by the posix_spawn proposal")
    ap.add_argument("--task-events", default="", choices=["", "lifecycle", "terminal", "none"],
                    help="cmdcount: runtime.task_events (default: the config default)")
    a = ap.parse_args()
    opts = dict(o.split("=", 1) for o in a.opt)
    if a.system == "floor":
        bench_floor(a.n, a.w, a.job)
    elif a.system == "spawn":
        bench_spawn(a.n, a.w, a.job, a.procs)
    elif a.system == "memory":
        bench_memory()
    elif a.system == "cmdcount":
        bench_cmdcount(a.n, a.w, a.variant, a.task_events)
    elif a.system in PEERS:
        bench_peer(a.system, a.n, a.w, a.appendfsync, opts)
    else:
        bench_tinytownd(a.n, a.w, a.appendfsync, a.profile, a.cli)


if __name__ == "__main__":
    main()
