"""RQ peer: W × `rq worker -w rq.worker.SimpleWorker` (no fork per job), jobs enqueued with
`Queue.enqueue_many` (pipelined, 1,000 per call), default result_ttl.

opts: worker (a worker class path; default rq.worker.SimpleWorker; rq.worker.Worker is RQ's
default, a fork per job), pool=1 (one `rq worker-pool -n W` instead of W `rq worker`).
"""
from __future__ import annotations

from importlib.metadata import version

from peers.harness import Peer, bin_path

QUEUE = "ttbench"


def make(lab, w: int, opts: dict) -> Peer:
    from rq import Queue, Worker

    from peers import jobs

    r = lab.client()
    q = Queue(QUEUE, connection=r)
    wclass = opts.get("worker", "rq.worker.SimpleWorker")
    pool = str(opts.get("pool", "0")) == "1"
    if pool:
        argvs = [[bin_path("rq"), "worker-pool", "-q", "-n", str(w), "-w", wclass, "-u", lab.url,
                  QUEUE]]
        cfg = f"rq worker-pool -n {w} -w {wclass}; enqueue_many(run_job)"
    else:
        argvs = [[bin_path("rq"), "worker", "-q", "-w", wclass, "-u", lab.url, QUEUE]] * w
        cfg = f"{w} x rq worker -w {wclass}; enqueue_many(run_job)"

    def enqueue(k: int) -> None:
        for i in range(0, k, 1000):
            q.enqueue_many([Queue.prepare_data(jobs.run_job) for _ in range(min(1000, k - i))])

    def ready(procs) -> bool:
        return len(Worker.all(connection=r)) >= w

    return Peer(system="rq", config=cfg, argvs=argvs, enqueue=enqueue, concurrency=w, ready=ready,
                version=version("rq"))
