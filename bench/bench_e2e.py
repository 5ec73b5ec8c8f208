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
BIN = os.path.dirname(sys.executable)
BASELINE = os.environ.get("TT_BASELINE_DIR", os.path.join(os.path.dirname(ROOT), "shared", "baseline"))


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
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("system", choices=["floor", "rq", "huey", "tinytownd"])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--sh", action="store_true", help="floor: sh -c true")
    ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always", "off", "no"])
    ap.add_argument("--profile", metavar="OUT", help="tinytownd: record with py-spy into OUT")
    a = ap.parse_args()
    if a.system == "floor":
        bench_floor(a.n, a.w, a.sh)
    elif a.system == "rq":
        bench_rq(a.n, a.w)
    elif a.system == "huey":
        bench_huey(a.n, a.w)
    else:
        bench_tinytownd(a.n, a.w, a.appendfsync, a.profile)


if __name__ == "__main__":
    main()
