"""The job every system runs in the end-to-end benchmark: one `true` subprocess.

RQ imports `peers.jobs.run_true` (SimpleWorker, same process); huey's consumer imports
`peers.jobs.huey` (RedisHuey on TT_BENCH_REDIS_URL). Importing this module without the URL set is
fine for RQ (huey is then not built).
"""
import os
import subprocess

TRUE = ["true"]


def run_true():
    """RQ job: fork/exec `true`, like an agent CLI round that does nothing."""
    subprocess.run(TRUE, check=True, stdin=subprocess.DEVNULL)
    return 1


URL = os.environ.get("TT_BENCH_REDIS_URL")
huey = None
if URL:
    from huey import RedisHuey

    huey = RedisHuey("ttbench-e2e", url=URL, results=True)

    @huey.task()
    def huey_true():
        subprocess.run(TRUE, check=True, stdin=subprocess.DEVNULL)
        return 1
