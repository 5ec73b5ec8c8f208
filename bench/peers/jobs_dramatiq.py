"""dramatiq 2 task module: `dramatiq peers.jobs_dramatiq -p P -t T` (or `dramatiq-gevent`).

RedisBroker on TT_BENCH_REDIS_URL (the peer's private redis-server), default middleware, no
result backend (nothing reads a result: completions are counted by peers.jobs).
"""
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers.jobs import job

broker = RedisBroker(url=os.environ["TT_BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="ttbench", max_retries=0)
def sh_true():
    job()
