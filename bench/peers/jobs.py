"""The job every system runs in the end-to-end benchmark, and how completions are counted.

The job is `sh -c true` as a user writes it: `subprocess.run(["sh", "-c", "true"], check=True)`
(a gevent worker's monkey-patched subprocess forks the worker; a thread or process worker gets
CPython's vfork/exec). After `sh` has exited 0, the job appends its completion time
(`time.time()`, 8 bytes) to the file named by TT_BENCH_DONE, opened O_APPEND once per process:
one write(2), no Redis round trip, atomic between processes. The bench counts the file's size / 8
and takes the largest time in it as the last completion. A job whose `sh` fails raises (the
peer records a failure) and is never counted.

RQ imports `peers.jobs.run_job`; the other peers' task modules (jobs_dramatiq, jobs_celery,
jobs_huey) call `job()`.
"""
import os
import struct
import subprocess
import time

CMD = ["sh", "-c", "true"]
_fds: dict[int, int] = {}          # pid -> fd of the completions file (forked workers reopen)


def mark_done() -> None:
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        fd = _fds[pid] = os.open(os.environ["TT_BENCH_DONE"], os.O_WRONLY | os.O_APPEND)
    os.write(fd, struct.pack("<d", time.time()))


def job() -> None:
    subprocess.run(CMD, check=True)
    mark_done()


def run_job() -> None:
    """RQ job (imported by dotted path)."""
    job()


class Completions:
    """The completions file of one run (in the peer's temp dir)."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "done.bin")
        open(self.path, "wb").close()

    @property
    def env(self) -> dict:
        return {"TT_BENCH_DONE": self.path}

    def count(self) -> int:
        return os.stat(self.path).st_size // 8

    def times(self) -> list[float]:
        with open(self.path, "rb") as f:
            raw = f.read()
        raw = raw[: len(raw) // 8 * 8]
        return [t for (t,) in struct.iter_unpack("<d", raw)]
