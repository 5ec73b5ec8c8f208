#!/usr/bin/env python3
"""Failover under load, and what `redis.wait_replicas` costs.

    .venv/bin/python bench/bench_failover.py [--failovers 5] [-n 2000] [-w 8] [--out FILE]

Set-up (tests/support/sentinel.py): one primary, one replica, three redis-sentinel processes on
loopback ports in a temp dir, Sentinel down-after-milliseconds 1000, failover-timeout 3000. A
`tinytownd run` daemon with 8 agents reaches them through the Sentinels.

* failover: for wait_replicas 0 and 1: a producer creates backlog tasks continuously (Town +
  store/durability.Durability like `tinytownd assign`, through a Sentinel client) while the
  agents (a shell CLI that logs START/END) work; `--failovers` times, kill -9 of the primary
  (the killed node restarts as a replica). Per failover: seconds from the kill to the first
  task completed on the new primary. At the end: tasks rerun (CLI starts minus tasks), tasks
  whose creation was acknowledged but that are gone (lost): with 0 every creation that returned
  is acknowledged; with 1 only those whose WAIT reached the replica.
* throughput: `tinytownd batch FILE -c CFG` (N tasks, CLI `true`, submitted to the daemon of the
  same HA set-up) with wait_replicas 0 and 1, alternating 0,1,0,1 in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import redis  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.helpers import wait_for  # noqa: E402
from tests.support.sentinel import (DOWN_AFTER_MS, FAST_RUNTIME, HaRedis, agent_cli,  # noqa: E402
                                    agent_log, master_client, retrying)
from tinytownd.store.durability import Durability  # noqa: E402
from tinytownd.store.keys import Keys  # noqa: E402
from tinytownd.store.town import Town  # noqa: E402

BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"[bench_failover] {msg}", file=sys.stderr, flush=True)


def _states(r, keys, tids) -> list:
    p = r.pipeline(transaction=False)
    for t in tids:
        p.hget(keys.task(t), "state")
    return p.execute()


def failover_run(wait: int, failovers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ttb-fo-", dir="/tmp") as td:
        td = Path(td)
        ha = HaRedis(td / "ha").start()
        work = td / "work"
        d = DaemonProcess(td / "d", redis=ha.config(wait_replicas=wait, wait_timeout_ms=500),
                          runtime=FAST_RUNTIME,
                          agent_clis={"c": {"command": agent_cli(work, 0.01),
                                            "max_attempts": 20}},
                          agents=[{"name": "w", "role": "worker", "cli": "c", "count": 8}])
        try:
            d.start()
            dur = Durability(1, 500) if wait else None
            town = Town(master_client(ha), Keys("t"), durability=dur)
            created, acked = [], []
            stop = gevent.event.Event()

            def producer():
                i = 0
                while not stop.is_set():
                    before = (dur.short, dur.errors) if dur else None
                    try:
                        tid = town.backlog_add(f"p{i}")
                    except (redis.RedisError, OSError):
                        gevent.sleep(0.05)
                        continue
                    i += 1
                    created.append(tid)
                    if dur is None or (dur.short, dur.errors) == before:
                        acked.append(tid)
                    gevent.sleep(0.005)
            g = gevent.spawn(producer)
            to_first = []
            for k in range(failovers):
                n0 = len(acked)
                wait_for(lambda: len(acked) > n0 + 60, 120, what="tasks created")
                old = ha.primary_port()
                t_kill = time.monotonic()
                ha.nodes[old].kill()
                # first answer of the new primary: what it has completed so far
                base = None
                while True:
                    try:
                        if ha.primary_port() != old:
                            c = ha.primary().client(socket_timeout=1)
                            if c.info("replication").get("role") == "master":
                                done = sum(1 for s in _states(c, town.keys, list(created))
                                           if s == "completed")
                                if base is None:
                                    base = done       # what it had from the old primary
                                elif done > base:
                                    to_first.append(time.monotonic() - t_kill)
                                    break
                    except (redis.RedisError, OSError, RuntimeError, KeyError):
                        pass
                    if time.monotonic() - t_kill > 120:
                        raise RuntimeError("no completion on the new primary within 120 s")
                    time.sleep(0.02)
                # the killed node comes back as a replica of the new primary
                node = ha.nodes[old]
                node.replica_of = ha.primary_port()
                node.start()
                ha.wait_synced(ha.primary_port())
                ha.failovers += 1
                log(f"wait_replicas {wait}: failover {k + 1}: first completion "
                    f"{to_first[-1]:.2f} s after the kill")
            stop.set()
            g.get(timeout=30)
            c = master_client(ha)
            states = retrying(lambda: _states(c, town.keys, acked))
            lost = [t for t, s in zip(acked, states) if s is None]
            live = [t for t, s in zip(acked, states) if s is not None]
            wait_for(lambda: all(s == "completed" for s in
                                 retrying(lambda: _states(c, town.keys, live))), 300,
                     interval=0.5, what="every surviving task completed")
            starts, violations = agent_log(work)
            st = retrying(d.status)
            d.stop()
            return {"wait_replicas": wait, "failovers": failovers,
                    "down_after_ms": DOWN_AFTER_MS,
                    "kill_to_first_completion_s": [round(x, 3) for x in to_first],
                    "p50_s": round(statistics.median(to_first), 3),
                    "max_s": round(max(to_first), 3),
                    "created": len(created), "acknowledged": len(acked), "lost": len(lost),
                    "reruns": sum(starts.values()) - len(starts),
                    "tasks_started": len(starts), "double_runs": len(violations),
                    "daemon_wait": st["components"]["runtime"].get("wait"),
                    "daemon_failovers": st["redis"].get("failovers")}
        finally:
            d.cleanup()
            ha.stop()


def throughput_run(wait: int, n: int, w: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ttb-fw-", dir="/tmp") as td:
        td = Path(td)
        ha = HaRedis(td / "ha").start()
        d = DaemonProcess(td / "d", redis=ha.config(wait_replicas=wait, wait_timeout_ms=500),
                          agent_clis={"t": {"command": "true"}},
                          agents=[{"name": "w", "role": "worker", "cli": "t", "count": w}])
        try:
            d.start()
            bf = td / "batch.yaml"
            bf.write_text("tasks:\n" + "".join(f"  - {{id: t{i}, description: noop}}\n"
                                               for i in range(n)))
            summ = td / "summary.json"
            env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
            p = subprocess.run([str(BIN / "tinytownd"), "batch", str(bf), "-c", str(d.cfg_path),
                                "--progress", "none", "--summary", str(summ)],
                               capture_output=True, text=True, env=env, cwd=td, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"batch exit {p.returncode}: {p.stderr[-2000:]}")
            s = json.loads(summ.read_text())
            st = d.status()
            d.stop()
            return {"wait_replicas": wait, "n": n, "agents": w, "secs": s["wall_time_s"],
                    "tasks_per_s": round(n / s["wall_time_s"], 1),
                    "completed": s["totals"]["completed"],
                    "daemon_wait": st["components"]["runtime"].get("wait")}
        finally:
            d.cleanup()
            ha.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--failovers", type=int, default=5)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--skip-failover", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    out = {"load_before": os.getloadavg(), "started": time.strftime("%H:%M:%S", time.gmtime())}
    if not a.skip_failover:
        out["failover"] = [failover_run(wait, a.failovers) for wait in (0, 1)]
    out["throughput"] = [throughput_run(wait, a.n, a.w) for wait in (0, 1, 0, 1)]
    for wait in (0, 1):
        rates = [r["tasks_per_s"] for r in out["throughput"] if r["wait_replicas"] == wait]
        out[f"tasks_per_s_wait{wait}_median"] = statistics.median(rates)
    out["wait1_vs_wait0"] = round(out["tasks_per_s_wait1_median"]
                                  / out["tasks_per_s_wait0_median"], 3)
    out["load_after"] = os.getloadavg()
    out["ended"] = time.strftime("%H:%M:%S", time.gmtime())
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
