"""One end-to-end run of a peer task queue: its own redis-server, its workers started and idle,
N `sh -c true` jobs, completions counted on the worker side (peers.jobs.Completions).

    row = run_peer(peer_dramatiq.make, n=5000, w=8, appendfsync="everysec", opts={"t": "4"})

The sequence, the same for every peer:
1. a private redis-server (peers.lab.RedisLab: unix socket in a temp dir, no TCP, `save ""`,
   AOF with the given appendfsync, or none for `off`);
2. the peer's worker command(s), each in its own session (all killed with their process group at
   the end), stdout to /dev/null, stderr to a log file (its tail is shown on a failure);
3. warm-up: 2 × the peer's concurrency jobs, waited for, then the peer's own readiness check (its
   worker registry or the number of worker processes), then 0.5 s of idling;
4. the clock starts (`time.time()`) right before the first of the N jobs is enqueued from this
   process, with the peer's ordinary client API; it stops at the largest completion time the jobs
   wrote (the last `sh -c true` to finish, as seen by its worker), once N completions are in;
5. CPU over the window from /proc (peers.proc): the worker processes' own CPU, the children they
   reaped (the jobs' `sh`), the redis-server's, and this process's (the producer), per task.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from peers.jobs import Completions
from peers.lab import RedisLab
from peers.proc import Snapshot, descendants

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # bench/
BIN = os.path.dirname(sys.executable)


@dataclass
class Peer:
    system: str
    config: str                               # the exact configuration, for the table
    argvs: list[list[str]]                    # worker command(s), run from bench/
    enqueue: Callable[[int], None]            # send n jobs (in this process)
    concurrency: int                          # jobs the workers run at once
    ready: Callable[[list], bool] = lambda procs: True   # extra readiness check
    env: dict = field(default_factory=dict)   # extra environment of the workers
    version: str = ""


def bin_path(name: str) -> str:
    return os.path.join(BIN, name)


def fsync_of(appendfsync: str | None) -> str | None:
    return None if appendfsync in (None, "off") else appendfsync


def _alive(procs) -> bool:
    return all(p.poll() is None for p in procs)


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for(cond: Callable[[], bool], timeout: float, what: str, procs, log: str,
             step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: timed out\n{_tail(log)}")
        if not _alive(procs):
            raise SystemExit(f"{what}: a worker process exited\n{_tail(log)}")
        time.sleep(step)


def tree_size(procs) -> int:
    return len(descendants([p.pid for p in procs]))


def run_peer(make: Callable[..., Peer], *, n: int, w: int, appendfsync: str | None,
             opts: dict) -> dict:
    name = make.__module__.rsplit(".", 1)[-1]
    with RedisLab(appendfsync=fsync_of(appendfsync), name=name.replace("peer_", "")) as lab:
        comp = Completions(lab.dir)
        env_common = {"TT_BENCH_REDIS_URL": lab.url, "TT_BENCH_REDIS_SOCK": lab.sock, **comp.env,
                      "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
        os.environ.update(env_common)        # the producer side imports the same task modules
        if HERE not in sys.path:
            sys.path.insert(0, HERE)
        peer = make(lab, w, opts)
        log = os.path.join(lab.dir, "workers.log")
        env = {**os.environ, **env_common, **peer.env}
        t_start = time.perf_counter()
        procs = []
        with open(log, "ab") as errf:
            for argv in peer.argvs:
                procs.append(subprocess.Popen(argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=errf,
                                              start_new_session=True))
        try:
            warm = 2 * peer.concurrency
            peer.enqueue(warm)
            wait_for(lambda: comp.count() >= warm, 120, f"{peer.system} warm-up", procs, log)
            wait_for(lambda: peer.ready(procs), 60, f"{peer.system} readiness", procs, log, 0.05)
            startup = time.perf_counter() - t_start
            time.sleep(0.5)
            roots = [p.pid for p in procs]
            before = Snapshot.take(roots, [lab.proc.pid])
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.time()
            peer.enqueue(n)
            t_enq = time.time() - t0
            wait_for(lambda: comp.count() >= warm + n, 1800, f"{peer.system}: {n} jobs", procs,
                     log)
            after = Snapshot.take(roots, [lab.proc.pid])
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            times = comp.times()
            dt = max(times) - t0
            time.sleep(0.1)
            extra = comp.count() - warm - n          # duplicates (none expected)
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in procs:
                p.wait(10)
    cpu = after.minus(before, n)
    producer = ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / n * 1000
    return {"system": peer.system, "n": n, "workers": peer.concurrency, "secs": round(dt, 3),
            "tasks_per_s": round(n / dt, 1), "enqueue_s": round(t_enq, 3),
            "startup_s": round(startup, 3), "duplicates": extra,
            "appendfsync": appendfsync or "off",
            "cpu_ms_per_task": {"workers": cpu["workers_ms"], "jobs_sh": cpu["children_ms"],
                                "redis": cpu["redis_ms"], "producer": round(producer, 3)},
            "worker_procs": cpu["procs"], "load_start": cpu["load_start"],
            "load_end": cpu["load_end"], "version": peer.version, "cmd": peer.config,
            "opts": opts}
