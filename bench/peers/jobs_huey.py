"""huey task module: `huey_consumer peers.jobs_huey.huey -k thread|process|greenlet -w N -n -C`.

RedisHuey on TT_BENCH_REDIS_URL (blocking BRPOP dequeue, huey's default for Redis). The task
returns None, so huey stores no result (completions are counted by peers.jobs).
"""
import os

from huey import RedisHuey

from peers.jobs import job

huey = RedisHuey("ttbench", url=os.environ["TT_BENCH_REDIS_URL"], results=False)


@huey.task()
def sh_true():
    job()
