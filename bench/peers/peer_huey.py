"""huey peer: one `huey_consumer peers.jobs_huey.huey -k KIND -w W -n -C` (RedisHuey, blocking
dequeue; -n: no periodic-task scheduling, -C: no worker health checks, both as huey's consumer
docs suggest when unused). `-k greenlet` goes through peers/huey_gevent_consumer.py, which
monkey-patches first.

opts: k (thread|process|greenlet; default thread), w (workers; default W).
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import version

from peers.harness import Peer, bin_path, tree_size


def make(lab, w: int, opts: dict) -> Peer:
    kind = opts.get("k", "thread")
    nw = int(opts.get("w", w))
    from peers import jobs_huey

    if kind == "greenlet":
        here = os.path.dirname(os.path.abspath(__file__))
        argv = [sys.executable, os.path.join(here, "huey_gevent_consumer.py")]
    else:
        argv = [bin_path("huey_consumer")]
    argv += ["peers.jobs_huey.huey", "-k", kind, "-w", str(nw), "-n", "-C", "-q"]

    def enqueue(k: int) -> None:
        for _ in range(k):
            jobs_huey.sh_true()

    def ready(procs) -> bool:
        return kind != "process" or tree_size(procs) >= 1 + nw

    return Peer(system="huey" if kind == "thread" else f"huey-{kind}",
                config=f"huey_consumer -k {kind} -w {nw} -n -C; task() x N", argvs=[argv],
                enqueue=enqueue, concurrency=nw, ready=ready, version=version("huey"))
