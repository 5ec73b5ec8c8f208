"""One lock per repository: tinytownd's git operations on a repository run one at a time.

`git worktree add`, `remove`, `prune` and ref deletions race on the repository's own files
(`.git/worktrees/`, packed-refs). Inside one process a gevent semaphore per repository orders the
greenlets; across processes (another daemon on the host, `tinytownd workspaces prune`) an
flock(2) on the repository's common git directory itself — no lock file is created, and the
kernel drops the lock with its holder, so a kill -9 leaves none behind. The flock is tried
without blocking and retried with short sleeps: waiting never blocks the event loop.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

import gevent
from gevent.lock import Semaphore

from .policy import WorkspaceError

LOCK_TIMEOUT_S = 300.0
_locks: dict[str, Semaphore] = {}


@contextlib.contextmanager
def repo_lock(common_dir: str, timeout_s: float = LOCK_TIMEOUT_S):
    """Hold the lock of the repository whose common git directory is `common_dir`."""
    key = os.path.realpath(common_dir)
    sem = _locks.get(key)
    if sem is None:
        sem = _locks[key] = Semaphore(1)
    if not sem.acquire(timeout=timeout_s):
        raise WorkspaceError(f"the lock of {key} was not free within {timeout_s:g}s", "daemon")
    fd = None
    try:
        try:
            fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise WorkspaceError(f"cannot open {key} to lock it: {e.strerror}", "daemon") from None
        deadline = time.monotonic() + timeout_s
        pause = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise WorkspaceError(f"cannot lock {key}: {e.strerror}", "daemon") from None
            if time.monotonic() >= deadline:
                raise WorkspaceError(f"another process held the lock of {key} for over "
                                     f"{timeout_s:g}s", "daemon")
            gevent.sleep(pause)
            pause = min(pause * 2, 0.1)
        yield
    finally:
        if fd is not None:
            os.close(fd)        # also releases the flock
        sem.release()
