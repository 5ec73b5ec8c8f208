#!/usr/bin/env python3
"""Dispatch benchmarks of the town runtime. Each prints JSON lines.

    python bench/bench_dispatch.py assign  [-n 100000] [--agents 100]
    python bench/bench_dispatch.py pickup  [--agents 100] [--rate 200] [--duration 10]
    python bench/bench_dispatch.py idle    [--agents 1000] [--rate 200] [--duration 5]
    python bench/bench_dispatch.py all

Every run gets a private redis-server on a unix socket in a temp dir (no persistence), stopped
at the end.

  assign  Assignment throughput: Town.assign_many (tt-compatible task hash + daemon task meta +
          task_assign message + task_assigned events in town and agent streams, pipelined in
          chunks) vs raw pipelined LPUSH (batches of 100, as ../shared/baseline/raw_redis_gevent.py
          `produce pipe100`) of the same task_assign payload to the same inboxes. Reports both
          rates and the ratio (goal >= 0.3).
  pickup  Pickup latency: TownRuntime in-process with A idle agents (CLI `cat >/dev/null`); tasks
          are assigned one by one with Town.assign at a fixed rate, round-robin over the agents;
          latency = time from just before Town.assign to the moment the agent CLI process has been
          started (Popen returned, the runtime's spawn hook). Goal p99 <= 10 ms (100 agents,
          200 tasks/s).
  idle    1,000 idle agents: process RSS (the runtime's process, in-process harness), Redis
          connected clients, time to start all agents, then the pickup test at `--rate`.
          Goals: RSS <= 150 MB, pickup p99 <= 15 ms.

TT_BENCH_PROBE=1 adds `probe` to pickup/idle: what overlapped the slowest 1 % of pickups (GC
pauses, long greenlet slices, heartbeat passes, sweeps, log writes; bench/tail_probe.py).
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tail_probe  # noqa: E402
from tests.support.helpers import RedisServer  # noqa: E402
from tests.support.runtime import Harness, write_config  # noqa: E402
from tinytownd import logs  # noqa: E402
from tinytownd.store import records  # noqa: E402
from tinytownd.store.keys import Keys  # noqa: E402
from tinytownd.store.town import Town  # noqa: E402
from tinytownd.store.wire import new_id  # noqa: E402


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def pct(vals, p):
    if not vals:
        return float("nan")
    s = sorted(vals)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return -1.0


class Lab:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        self.srv = RedisServer(self.dir / "redis").start()

    def close(self):
        self.srv.stop()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- assign
def bench_assign(n: int, agents: int) -> dict:
    lab = Lab()
    try:
        r = lab.srv.client()
        town = Town(lab.srv.client(), Keys("bench"))
        aids = [new_id() for _ in range(agents)]
        # raw: pipelined LPUSH (batches of 100) of the same task_assign JSON to the same inboxes
        r.flushdb()
        t0 = time.perf_counter()
        p = r.pipeline(transaction=False)
        for i in range(n):
            aid = aids[i % agents]
            p.lpush(f"tt:bench:inbox:{aid}", records.task_assign_json(aid, new_id()))
            if (i + 1) % 100 == 0:
                p.execute()
        p.execute()
        raw_s = time.perf_counter() - t0
        r.flushdb()
        items = [{"aid": aids[i % agents], "description": f"task {i}: do the thing"}
                 for i in range(n)]
        t0 = time.perf_counter()
        tids = town.assign_many(items)
        tt_s = time.perf_counter() - t0
        assert len(tids) == n and sum(r.llen(town.keys.inbox(a)) for a in aids) == n
        return emit({"test": "assign", "n": n, "agents": agents,
                     "raw_lpush_pipe100_per_s": round(n / raw_s),
                     "town_assign_many_per_s": round(n / tt_s),
                     "ratio": round(raw_s / tt_s, 3),
                     "commands_per_assign": 5})
    finally:
        lab.close()


# ----------------------------------------------------------------------------- pickup
def _runtime(lab: Lab, agents: int) -> Harness:
    root = lab.dir / "town"
    root.mkdir(exist_ok=True)
    cfg = write_config(root, lab.srv.url, town="bench",
                       agents=[{"name": "a", "cli": "noop", "count": agents}],
                       clis={"noop": {"command": "cat >/dev/null"}},
                       runtime={"heartbeat_interval_s": 5.0, "lease_ttl_s": 30.0,
                                "stale_after_s": 60.0, "sweep_interval_s": 10.0,
                                "block_timeout_s": 1.0})
    return Harness(cfg)


def _pickup(h: Harness, rate: float, duration: float) -> dict:
    aids = sorted(w.aid for w in h.rt.workers.values())
    sent: dict[str, float] = {}
    started: dict[str, float] = {}
    h.rt.links.spawn_hooks.append(lambda w, tid, pid: started.__setitem__(tid, time.perf_counter()))
    n = int(rate * duration)
    load0 = [round(x, 2) for x in os.getloadavg()]
    probe = tail_probe.Probe().install() if tail_probe.ENABLED else None
    cpu0 = sum(os.times()[:2])
    t_start = time.perf_counter()
    for i in range(n):
        due = t_start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        t = time.perf_counter()
        tid = h.town.assign(aids[i % len(aids)], f"task {i}")   # the spawn hook matches by id
        sent[tid] = t
    deadline = time.perf_counter() + 30
    while len(started) < n and time.perf_counter() < deadline:
        gevent.sleep(0.01)
    wall = time.perf_counter() - t_start
    cpu = sum(os.times()[:2]) - cpu0
    lat = [(started[t] - s) * 1000 for t, s in sent.items() if t in started]
    extra = {}
    if probe is not None:
        probe.uninstall()
        extra["probe"] = probe.explain([(s, started[t]) for t, s in sent.items()
                                        if t in started])
    return {**extra, "load_start": load0, "load_end": [round(x, 2) for x in os.getloadavg()],
            "n": n, "picked_up": len(lat), "rate": rate,
            "achieved_rate": round(n / max(1e-9, (max(sent.values()) - t_start)), 1),
            "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3),
            "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3) if lat else None,
            "py_cpu_frac": round(cpu / wall, 2), "py_cpu_ms_per_task": round(cpu / n * 1000, 2)}


def _assign_new(town: Town, aid: str, tid: str, desc: str) -> None:
    """Town.assign with a preset new task id (so the latency hook can match it)."""
    p = town.r.pipeline(transaction=False)
    p.hset(town.keys.task(tid), mapping=records.new_task_hash(tid, desc, state="assigned",
                                                          assigned_to=aid))
    town.assign(aid, task_id=tid, pipe=p)
    p.execute()


def _wait_idle(h: Harness, agents: int, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if len(h.rt.workers) == agents and all(w.idle for w in h.rt.workers.values()):
            return time.perf_counter() - t0
        gevent.sleep(0.05)
    raise RuntimeError("agents did not all become idle")


def _wait_settled(h: Harness, agents: int, timeout: float = 15) -> float | None:
    """The runtime freezes its start-up objects for the GC once every agent has started
    (runtime/gc_tuning.py); the pickup is measured after that, as a running daemon is."""
    settler = getattr(h.rt.agents, "settler", None)    # (absent in older code: A/B runs)
    t0 = time.perf_counter()
    while settler is not None and time.perf_counter() - t0 < timeout:
        if settler.count == agents:
            return round(time.perf_counter() - t0, 2)
        gevent.sleep(0.05)
    return None


def bench_pickup(agents: int, rate: float, duration: float, test: str = "pickup") -> dict:
    lab = Lab()
    h = None
    try:
        rss0 = rss_mib()
        h = _runtime(lab, agents)
        t0 = time.perf_counter()
        h.start()
        startup = _wait_idle(h, agents)
        settled = _wait_settled(h, agents)
        gevent.sleep(1.0)
        info = lab.srv.client().info("clients")
        rss_idle = rss_mib()
        res = _pickup(h, rate, duration)
        return emit({"test": test, "agents": agents, **res,
                     "startup_s": round(startup, 2), "gc_settled_after_idle_s": settled,
                     "gc_frozen_objects": gc.get_freeze_count(), "rss_before_mib": round(rss0, 1),
                     "rss_idle_mib": round(rss_idle, 1),
                     "redis_connected_clients_idle": info["connected_clients"],
                     "block_pool_max": h.rt.block.connection_pool.max_connections,
                     "wall_s": round(time.perf_counter() - t0, 1)})
    finally:
        if h is not None:
            h.stop(drain_s=5)
        lab.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["assign", "pickup", "idle", "all"])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--agents", type=int)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float)
    a = ap.parse_args(argv)
    logs.configure("warning")
    if a.what in ("assign", "all"):
        bench_assign(a.n, a.agents or 100)
    if a.what in ("pickup", "all"):
        bench_pickup(a.agents or 100, a.rate, a.duration or 10.0)
    if a.what in ("idle", "all"):
        bench_pickup(a.agents or 1000, a.rate, a.duration or 5.0, test="idle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
