"""Mission scheduler benchmarks.

    .venv/bin/python bench/bench_missions.py [--items 10000] [--chain 300] [--json]

1. tick: one scheduler tick over a 10,000-item layered DAG (each item depends on up to 3 items of
   earlier layers; ~40% done, some running, the rest pending/ready; 20 agents):
     pure   run_tick() on in-memory records (the algorithm alone)
     full   MissionEngine.tick(): fenced WATCH/MULTI, snapshot read (HGETALL of 10k items),
            bound-task read, run_tick, writes of the changed records — against a private
            redis-server on a unix socket.
   Goal: ≤ 200 ms per tick (Tinytown scans with KEYS and whole-record reads).
2. latency: a chain mission (item i depends on i-1), one agent double in this process and the
   engine in a separate process (like the daemon). Measured per item: from the moment the agent
   calls Town.complete_task() for item i to the moment the task_assign of item i+1 arrives in its
   inbox (BLPOP on a dedicated connection). The agent flips to `idle` after completing, as the
   runtime's worker does. Goal: p99 ≤ 50 ms (Tinytown waits for its next 30 s tick).
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.helpers import RedisServer  # noqa: E402
from tinytownd.store.keys import Keys  # noqa: E402
from tinytownd.missions.compile import ItemSpec, build  # noqa: E402
from tinytownd.missions.mission import MissionPolicy  # noqa: E402
from tinytownd.missions.scheduler import run_tick  # noqa: E402
from tinytownd.missions.tick import TickInput  # noqa: E402
from tinytownd.missions.storage import MissionStore  # noqa: E402
from tinytownd.store.town import Town  # noqa: E402
from tinytownd.store.wire import new_id, utcnow  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def big_dag(n: int, seed: int = 7):
    rnd = random.Random(seed)
    specs, width = [], 100
    for i in range(n):
        layer = i // width
        deps = []
        if layer:
            lo, hi = max(0, (layer - 3) * width), layer * width
            deps = sorted({f"i{rnd.randrange(lo, hi)}" for _ in range(rnd.randint(1, 3))})
        specs.append(ItemSpec(file_id=f"i{i}", title=f"Item {i}", depends_on=deps,
                              kind=rnd.choice(["implement", "test", "design", "implement"])))
    c = build(specs, [{"type": "doc", "path": "/bench"}],
              MissionPolicy(max_parallel_items=20, reviewer_required=False), 3)
    # a mid-flight state: the first 40% done, next layer ready/pending
    done_upto = int(n * 0.4)
    for k, it in enumerate(c.items):
        if k < done_upto:
            it.status = "done"
            it.artifact_refs = [f"task:{new_id()}"]
    return c


def agents(n=20):
    return [{"id": new_id(), "name": f"worker-{i}", "role_id": "worker",
             "state": "idle" if i % 2 else "working", "last_active_at": ""} for i in range(n)]


def bench_pure(n: int, rounds: int = 10) -> dict:
    c = big_dag(n)
    items = {it.id: it for it in c.items}
    ags = agents()
    meta = dict(c.meta)
    tasks = {}
    times = []
    m = c.mission
    now = utcnow()
    for _ in range(rounds):
        now += timedelta(seconds=1)
        inp = TickInput(mission=m, items=items, watches={}, cmd_watches={}, controls=[],
                        tasks=tasks, agents=ags, meta=meta, now=now)
        t0 = time.perf_counter()
        out = run_tick(inp)
        times.append((time.perf_counter() - t0) * 1000)
        for nt in out.new_tasks:
            tasks[nt.task_id] = {"id": nt.task_id, "state": "assigned", "tags": nt.tags,
                                 "assigned_to": nt.agent}
        meta.update(out.meta_set)
        # complete the live tasks so the next tick has work to do
        for t in tasks.values():
            t["state"] = "completed"
        for tid in out.tasks_processed:
            tasks.pop(tid, None)
    return {"items": n, "ticks": rounds, "p50_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1)}


def bench_full(url: str, n: int, rounds: int = 10) -> dict:
    from tests.support.missions import EngineHandle, hold_lease
    import redis
    r = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys("bench")
    town = Town(r, keys)
    store = MissionStore(r, keys)
    ags = []
    for i in range(20):
        aid = town.register_agent(f"worker-{i}", role="worker", cli="bench")
        town.set_agent_state(aid, "idle", event=False)
        ags.append(aid)
    c = big_dag(n)
    store.create(c.mission, c.items, [], c.meta, c.log)
    mid = c.mission.id
    h = EngineHandle(url, "bench", run=False, ttl=60, sweep=3600)   # ticks driven by hand
    eng = h.engine
    hold_lease(eng, mid)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        eng.tick(mid)
        times.append((time.perf_counter() - t0) * 1000)
        # agents finish what they got, so each tick reconciles, promotes and assigns
        for tid in r.smembers(keys.mission_tasks(mid)):
            town.complete_task(tid, "ok")
        for aid in ags:
            r.delete(keys.inbox(aid))
    warm = times[1:]
    return {"items": n, "ticks": rounds, "first_ms": round(times[0], 1),
            "warm_p50_ms": round(statistics.median(warm), 1), "warm_max_ms": round(max(warm), 1)}


def bench_latency(url: str, chain: int) -> dict:
    import redis
    r = redis.Redis.from_url(url, decode_responses=True)
    blk = redis.Redis.from_url(url, decode_responses=True, socket_timeout=None)
    keys = Keys("lat")
    town = Town(r, keys)
    store = MissionStore(r, keys)
    aid = town.register_agent("solo", role="worker", cli="bench")
    town.set_agent_state(aid, "idle", event=False)
    specs = [ItemSpec(file_id=f"s{i}", title=f"Step {i}",
                      depends_on=[f"s{i - 1}"] if i else []) for i in range(chain)]
    c = build(specs, [{"type": "doc", "path": "/bench"}],
              MissionPolicy(max_parallel_items=1, reviewer_required=False), 3)
    code = ("from gevent import monkey; monkey.patch_all();"
            "from tests.support.missions import _engine_main; import sys;"
            "_engine_main(*sys.argv[1:4])")
    eng = subprocess.Popen([sys.executable, "-c", code, url, "lat", "30"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=open("/tmp/bench_eng.log", "w"), text=True)
    try:
        assert eng.stdout.readline().startswith("ready")
        store.create(c.mission, c.items, [], c.meta, c.log)
        lat = []
        t_done = None
        for i in range(chain):
            got = blk.blpop([keys.inbox(aid)], timeout=30)
            t_got = time.perf_counter()
            if got is None:
                raise SystemExit(f"no task_assign for step {i} within 30 s")
            if t_done is not None:
                lat.append((t_got - t_done) * 1000)
            tid = json.loads(got[1])["task_id"]
            town.set_agent_state(aid, "working", event=False)
            town.start_task(tid, aid)
            t_done = time.perf_counter()
            town.complete_task(tid, "ok")
            town.set_agent_state(aid, "idle", event=False, stamp_active=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                json.loads(r.get(keys.mission(c.mission.id)))["state"] != "completed":
            time.sleep(0.01)
        state = json.loads(r.get(keys.mission(c.mission.id)))["state"]
    finally:
        eng.terminate()
        eng.wait(10)
    return {"items": chain, "samples": len(lat), "p50_ms": round(pct(lat, 50), 2),
            "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat), 2),
            "mission_state": state}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--chain", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from tinytownd import logs
    logs.configure("warning")
    res = {}
    if a.items:
        res["pure_tick"] = bench_pure(a.items)
    with tempfile.TemporaryDirectory(prefix="ttb-", dir="/tmp") as d:
        srv = RedisServer(Path(d) / "redis").start()
        try:
            if a.items:
                res["full_tick"] = bench_full(srv.url, a.items)
            res["completion_to_next_assign"] = bench_latency(srv.url, a.chain)
        finally:
            srv.stop()
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
