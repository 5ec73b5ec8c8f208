"""Celery 5 task module: `celery -A peers.jobs_celery worker -P prefork -c 8 ...`.

Broker: the peer's private redis-server over its unix socket (`redis+socket://`). No result
backend and results ignored (completions are counted by peers.jobs). Late acks and the prefetch
multiplier come from the environment (TT_BENCH_CELERY_ACKS_LATE, TT_BENCH_CELERY_PREFETCH), so
the bench can set the configuration it measures.
"""
import os

from celery import Celery

from peers.jobs import job

app = Celery("ttbench", broker="redis+socket://" + os.environ["TT_BENCH_REDIS_SOCK"])
app.conf.update(
    task_acks_late=os.environ.get("TT_BENCH_CELERY_ACKS_LATE", "1") == "1",
    worker_prefetch_multiplier=int(os.environ.get("TT_BENCH_CELERY_PREFETCH", "4")),
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_default_queue="ttbench",
)


@app.task(name="sh_true")
def sh_true():
    job()
