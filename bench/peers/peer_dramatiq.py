"""dramatiq 2 peers: `dramatiq` (processes × threads) and `dramatiq-gevent` (greenlets).

    dramatiq        peers.jobs_dramatiq -p <cores> -t 4     (opts: p, t, worker_timeout, prefetch)
    dramatiq-gevent peers.jobs_dramatiq -p <cores> -t 4

Defaults: `-p` = the number of cores (dramatiq's own default and its guide's "as many processes as
there are CPU cores"), `-t 4` (the issue's configuration; run_all also runs `-t 8`, dramatiq's
default), the queue prefetch dramatiq computes (2 × threads), and `dramatiq_worker_timeout=100`
(ms; dramatiq's default 1000 is how long an idle consumer waits between polls: the bench's idle
half-second before the clock would otherwise cost dramatiq up to a second of its run, which a
busy queue never sees). Options a run may set: `worker_timeout` and `prefetch` (env
dramatiq_queue_prefetch). Jobs are sent with `actor.send()`, one Redis call each (dramatiq has
no bulk enqueue).
"""
from __future__ import annotations

import os
from importlib.metadata import version

from peers.harness import Peer, bin_path


def make(lab, w: int, opts: dict, gevent: bool = False) -> Peer:
    p = int(opts.get("p", os.cpu_count() or 2))
    t = int(opts.get("t", 4))
    env = {"dramatiq_worker_timeout": str(opts.get("worker_timeout", 100))}
    if "prefetch" in opts:
        env["dramatiq_queue_prefetch"] = str(opts["prefetch"])
    os.environ.update(env)
    from peers import jobs_dramatiq

    prog = "dramatiq-gevent" if gevent else "dramatiq"
    argv = [bin_path(prog), "peers.jobs_dramatiq", "-p", str(p), "-t", str(t),
            "--skip-logging"]
    r = lab.client()

    def enqueue(k: int) -> None:
        for _ in range(k):
            jobs_dramatiq.sh_true.send()

    def ready(procs) -> bool:   # every worker process has polled the broker
        return r.zcard("dramatiq:__heartbeats__") >= p

    cfg = (f"{prog} peers.jobs_dramatiq -p {p} -t {t}"
           + "".join(f" {k}={v}" for k, v in env.items()) + "; actor.send() x N")
    return Peer(system=prog, config=cfg, argvs=[argv], enqueue=enqueue, concurrency=p * t,
                ready=ready, env=env, version=version("dramatiq"))


def make_gevent(lab, w: int, opts: dict) -> Peer:
    return make(lab, w, opts, gevent=True)
