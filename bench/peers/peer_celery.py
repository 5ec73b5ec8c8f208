"""Celery 5 peers: `celery` (prefork pool) and `celery-gevent` (gevent pool).

    celery         -A peers.jobs_celery worker -P prefork -c 8 --prefetch-multiplier 64
                   --without-gossip --without-mingle --without-heartbeat, task_acks_late
    celery-gevent  the same with -P gevent -c 8

opts: c (concurrency), prefetch (worker_prefetch_multiplier), acks_late (1/0),
O (`-O fair|default`), lean (1/0: the three --without-* flags), pool (prefork|threads|gevent).
No result backend, results ignored. Jobs are sent with `task.delay()`, one Redis call each.
"""
from __future__ import annotations

from importlib.metadata import version

from peers.harness import Peer, bin_path, tree_size


def make(lab, w: int, opts: dict, pool: str = "prefork") -> Peer:
    pool = opts.get("pool", pool)
    c = int(opts.get("c", 8))
    prefetch = int(opts.get("prefetch", 64))
    acks_late = str(opts.get("acks_late", "1"))
    env = {"TT_BENCH_CELERY_PREFETCH": str(prefetch), "TT_BENCH_CELERY_ACKS_LATE": acks_late}
    import os
    os.environ.update(env)
    from peers import jobs_celery

    argv = [bin_path("celery"), "-A", "peers.jobs_celery", "worker", "-P", pool, "-c", str(c),
            "-l", "warning", "-Q", "ttbench"]
    lean = str(opts.get("lean", "1")) == "1"
    if lean:
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if "O" in opts:
        argv += ["-O", str(opts["O"])]

    def enqueue(k: int) -> None:
        for _ in range(k):
            jobs_celery.sh_true.delay()

    def ready(procs) -> bool:   # prefork: the main process and its c pool processes
        return pool != "prefork" or tree_size(procs) >= 1 + c

    system = "celery" if pool == "prefork" else f"celery-{pool}"
    cfg = (f"celery worker -P {pool} -c {c} --prefetch-multiplier {prefetch}"
           + (" acks_late" if acks_late == "1" else "")
           + (" --without-gossip/mingle/heartbeat" if lean else "")
           + (f" -O {opts['O']}" if "O" in opts else "") + "; task.delay() x N")
    return Peer(system=system, config=cfg, argvs=[argv], enqueue=enqueue, concurrency=c,
                ready=ready, version=version("celery"))


def make_gevent(lab, w: int, opts: dict) -> Peer:
    return make(lab, w, opts, pool="gevent")
