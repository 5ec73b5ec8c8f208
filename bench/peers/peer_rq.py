"""RQ peer: W × `rq worker -w rq.worker.SimpleWorker` (no fork per job), jobs enqueued with
`Queue.enqueue_many` (pipelined, 1,000 per call), default result_ttl.

opts: worker (a worker class path; default rq.worker.SimpleWorker).
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
    argv = [bin_path("rq"), "worker", "-q", "-w", wclass, "-u", lab.url, QUEUE]

    def enqueue(k: int) -> None:
        for i in range(0, k, 1000):
            q.enqueue_many([Queue.prepare_data(jobs.run_job) for _ in range(min(1000, k - i))])

    def ready(procs) -> bool:
        return len(Worker.all(connection=r)) >= w

    return Peer(system="rq", config=f"{w} x rq worker -w {wclass}; enqueue_many(run_job)",
                argvs=[argv] * w, enqueue=enqueue, concurrency=w, ready=ready,
                version=version("rq"))
