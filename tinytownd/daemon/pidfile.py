"""A pidfile that is also a lock (fcntl.flock), for `run --daemonize` / `run --pidfile`, and the
lock of a batch directory (`DIR/batch.lock`: one `tinytownd batch` process per directory).

* `acquire()` opens (creating) the file, takes an exclusive non-blocking lock and writes our pid.
  A held lock means another instance runs: `PidFileHeld` names its pid. A file left behind by a
  killed process is not locked, so it is simply taken over (stale detection for free).
* `release()` unlinks the file only while it still holds our pid, then drops the lock.
Stdlib only: used before gevent is imported.
"""
from __future__ import annotations

import errno
import fcntl
import os


class PidFileHeld(Exception):
    def __init__(self, path: str, pid: int | None):
        self.path, self.pid = path, pid
        super().__init__(f"{path} is locked by another running instance"
                         + (f" (pid {pid})" if pid else ""))


def read_pid(path: str | os.PathLike) -> int | None:
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        if e.errno != errno.EPERM:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class PidFile:
    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fd: int | None = None
        self.pid: int | None = None

    def held_by(self) -> int | None:
        """The pid of a live instance holding the lock, else None (no file, or stale)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_pid(self.path) or -1
        finally:
            os.close(fd)
        return None

    def acquire(self) -> "PidFile":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PidFileHeld(self.path, read_pid(self.path)) from None
        self.pid = os.getpid()
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.pid}\n".encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if self.pid == os.getpid() and read_pid(self.path) == self.pid:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    # python-daemon's DaemonContext(pidfile=...) enters it after detaching.
    def __enter__(self) -> "PidFile":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
