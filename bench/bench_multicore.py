#!/usr/bin/env python3
"""Would N worker processes (each with a share of the agents) beat one on this machine?

    python bench/bench_multicore.py [-n 5000] [-w 8] [--procs 1,2] [-r 3]
                                    [--appendfsync everysec]

A prototype of the prefork design, measured at the e2e load: one private redis-server (AOF as
given, default everysec), then P processes, each an in-process tinytownd Daemon with W/P agents
(CLI `true`, run as `sh -c true`) and the batch dispatcher of its own N/P tasks, against that one
redis-server. Each process is its own town (`mc0`, `mc1`, ...: the same Redis work as one town
whose agents are split, without two dispatchers sharing one batch). Every process starts, gets
its agents idle, says ready; then all are told to go at once. The rate is N / (last task done -
first submission), over all processes. P = 1 is the single-process daemon against the same kind
of redis-server. The P values run interleaved, R rounds; each run prints a JSON line, then the
medians. Per run also: the CPU per task of the processes' loop threads, of redis-server, and
the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from peers.lab import RedisLab  # noqa: E402
from peers.proc import Snapshot, loadavg  # noqa: E402

CHILD = r"""
import json, os, sys, time, tempfile, shutil
from gevent import monkey; monkey.patch_all()
import gevent
from pathlib import Path
from tinytownd import config as cfgmod
from tinytownd.batch.agents import agent_sections, roster
from tinytownd.batch.dispatch import DispatchedBatch
from tinytownd.batch.file import parse
from tinytownd.daemon.lifecycle import Daemon
n, w, url, town = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
root = Path(tempfile.mkdtemp(prefix=f"ttb-mc-{town}-", dir="/tmp"))
try:
    bf = parse({"tasks": [{"id": f"t{i}", "description": "noop"} for i in range(n)]}, "gen")
    clis, agents = agent_sections(bf, agents=w, cli="true")
    data = {"town": {"name": town, "root": str(root)}, "redis": {"url": url},
            "control": {"socket": str(root / "tinytownd.sock")},
            "logging": {"level": "info", "file": "logs/tinytownd.log"},
            "runtime": {"backlog_claim": False}, "missions": {"enabled": False},
            "http": {"listen": None},
            "agent_clis": clis, "agents": agents}
    cfg = cfgmod.from_dict(data, str(root / "cfg"), env={})
    d = Daemon(cfg, install_signals=False)
    d.start()
    g = gevent.spawn(d.run)
    r = d.ctx.clients.cmd
    batch = DispatchedBatch(bf, "mc", r, d.ctx.keys, roster=roster(cfg))
    batch.wait_agents()
    gevent.sleep(1.0)
    print("ready", flush=True)
    sys.stdin.readline()                   # go
    th0 = time.thread_time()
    t0 = time.time()
    batch.subscribe(); batch.write_meta(); batch.start(resume=False)   # as `tinytownd batch`
    assert batch.follow()
    t1 = time.time()
    th1 = time.thread_time()
    batch.close()
    d.request_stop(graceful=True); g.join(30)
    print(json.dumps({"town": town, "n": n, "agents": w, "t_start": t0, "t_end": t1,
                      "loop_thread_s": th1 - th0}), flush=True)
finally:
    shutil.rmtree(root, ignore_errors=True)
"""


def one_run(n: int, w: int, procs: int, appendfsync: str | None) -> dict:
    with RedisLab(appendfsync=appendfsync, name="mc") as lab:
        kids = []
        for i in range(procs):
            share_n = n // procs + (1 if i < n % procs else 0)
            share_w = w // procs + (1 if i < w % procs else 0)
            kids.append(subprocess.Popen(
                [sys.executable, "-c", CHILD, str(share_n), str(share_w), lab.url, f"mc{i}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        try:
            for k in kids:
                line = k.stdout.readline()
                if line.strip() != "ready":
                    raise SystemExit(f"child did not get ready: {line!r}")
            load0 = loadavg()
            before = Snapshot.take([k.pid for k in kids], [lab.proc.pid])
            for k in kids:
                k.stdin.write("go\n")
                k.stdin.flush()
            rows = [json.loads(k.stdout.readline()) for k in kids]
            after = Snapshot.take([k.pid for k in kids], [lab.proc.pid])
            for k in kids:
                k.wait(60)
        finally:
            for k in kids:
                if k.poll() is None:
                    k.kill()
                    k.wait(10)
    dt = max(r["t_end"] for r in rows) - min(r["t_start"] for r in rows)
    cpu = after.minus(before, n)
    return {"procs": procs, "n": n, "agents": w, "secs": round(dt, 3),
            "tasks_per_s": round(n / dt, 1),
            "per_proc_secs": [round(r["t_end"] - r["t_start"], 3) for r in rows],
            "loop_threads_ms_per_task": round(sum(r["loop_thread_s"] for r in rows) / n * 1000, 3),
            "daemons_ms_per_task": cpu["workers_ms"], "cli_ms_per_task": cpu["children_ms"],
            "redis_ms_per_task": cpu["redis_ms"], "load_start": load0, "load_end": loadavg(),
            "appendfsync": appendfsync or "off"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always", "no", "off"])
    a = ap.parse_args()
    fsync = None if a.appendfsync == "off" else a.appendfsync
    plist = [int(x) for x in a.procs.split(",")]
    runs: dict[int, list[dict]] = {p: [] for p in plist}
    for rnd in range(a.repeat):
        for p in plist:
            row = one_run(a.n, a.w, p, fsync)
            row["round"] = rnd + 1
            runs[p].append(row)
            print(json.dumps(row), flush=True)
    for p, rows in runs.items():
        rates = [r["tasks_per_s"] for r in rows]
        print(f"MEDIAN " + json.dumps({"procs": p, "tasks_per_s": statistics.median(rates),
                                       "runs_tasks_per_s": rates}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
