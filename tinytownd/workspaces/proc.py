"""Running git (and a workspace's setup command) without blocking the event loop.

`run(argv)` starts the program through the runtime's spawner (runtime/spawn.py: posix_spawn in a
session of its own, off the loop thread — a fork of the daemon through gevent.subprocess costs
~25 ms), reads its stdout and stderr through non-blocking pipes and waits on a pidfd, all
cooperatively; its exit status comes from the spawner's Reaper, which keeps the statuses libev's
SIGCHLD handler reaps (gevent's own waitpid can wait forever for a child reaped before it looked).
Past `timeout_s` the process group is killed. Where the spawner or pidfds are missing,
gevent.subprocess does the same more slowly.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass

import gevent
from gevent import subprocess as gsubprocess
from gevent.socket import wait_read

from tinytownd.runtime import spawn as _spawner
from tinytownd.runtime.process import close_fd

KILL_GRACE_S = 3.0
MAX_CAPTURE = 8 << 20          # bytes kept of a stream (format-patch output can be large)
_SIGDEF = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM",
                                             "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2")
                if hasattr(signal, n))
_fast = hasattr(os, "posix_spawn") and hasattr(os, "pidfd_open")
_which: dict[str, str | None] = {}


@dataclass
class Result:
    code: int | None          # None: could not start (error says why)
    out: bytes = b""
    err: bytes = b""
    timed_out: bool = False
    error: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def err_text(self) -> str:
        return self.err.decode("utf-8", "replace") or self.error


def which(prog: str) -> str | None:
    if prog not in _which:
        _which[prog] = prog if os.path.isabs(prog) else shutil.which(prog)
    return _which[prog]


def run(argv: list[str], *, env: dict | None = None, timeout_s: float = 60.0,
        out_path: str | None = None, lifeline=None) -> Result:
    """Run argv; capture stdout and stderr (or send both to `out_path`). `lifeline` (the
    runtime's) ends the process group if the daemon dies meanwhile."""
    t0 = time.monotonic()
    exe = which(argv[0])
    if exe is None:
        return Result(None, error=f"{argv[0]}: command not found")
    env = dict(os.environ) if env is None else env
    sp = _spawner.Spawner.get(_SIGDEF) if _fast else None
    if sp is None:
        return _run_popen(exe, argv, env, timeout_s, out_path, t0)
    fds = []
    try:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fds.append(devnull)
        if out_path is not None:
            log_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            fds.append(log_fd)
            out_r = err_r = None
            dups = ((devnull, 0), (log_fd, 1), (log_fd, 2))
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            fds += [out_w, err_w]
            dups = ((devnull, 0), (out_w, 1), (err_w, 2))
        try:
            pid = sp.spawn(exe, argv, env, dups)
        except (OSError, ValueError) as e:
            return Result(None, error=f"cannot start {argv[0]}: {e}")
        finally:
            for fd in fds:
                close_fd(fd)
            fds = []
        if lifeline is not None:
            lifeline.track(pid)
        readers = [gevent.spawn(_drain, fd) for fd in (out_r, err_r) if fd is not None]
        fds = [fd for fd in (out_r, err_r) if fd is not None]
        timed_out, status = False, None
        try:
            if pid not in sp.reaper.statuses:        # not exited and reaped already
                pidfd = os.pidfd_open(pid)
                try:
                    try:
                        wait_read(pidfd, timeout=timeout_s)
                    except OSError:     # socket.timeout is an OSError
                        timed_out = True
                        _kill(pid, pidfd)
                finally:
                    close_fd(pidfd)
            status = _status(sp.reaper, pid)
        except BaseException:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            raise
        finally:
            if lifeline is not None:
                lifeline.untrack(pid)
        gevent.joinall(readers, timeout=1.0)
        gevent.killall([g for g in readers if not g.dead], block=False)
        outs = [g.value or b"" for g in readers] + [b"", b""]
        code = 255 if status is None else os.waitstatus_to_exitcode(status)
        return Result(code, outs[0], outs[1], timed_out, duration_s=time.monotonic() - t0)
    finally:
        for fd in fds:
            try:
                close_fd(fd)
            except OSError:
                pass


def _status(reaper, pid: int) -> int | None:
    """The wait status of exited `pid`: libev's SIGCHLD handler may have reaped it, with the
    Reaper's callback still pending — give the loop a few turns before calling it lost."""
    for _ in range(100):
        st = reaper.exit_status(pid)
        if st is not None:
            return st
        gevent.sleep(0.001)
    return None


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks, n = [], 0
    while True:
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            wait_read(fd)
            continue
        except OSError:
            break
        if not b:
            break
        if n < MAX_CAPTURE:
            chunks.append(b)
            n += len(b)
    return b"".join(chunks)


def _kill(pid: int, pidfd: int, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it after `grace_s` if the leader is still there."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    try:
        wait_read(pidfd, timeout=grace_s)
    except OSError:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _run_popen(exe, argv, env, timeout_s, out_path, t0) -> Result:
    out = open(out_path, "wb") if out_path else gsubprocess.PIPE
    try:
        p = gsubprocess.Popen([exe, *argv[1:]], env=env, stdin=gsubprocess.DEVNULL, stdout=out,
                              stderr=gsubprocess.STDOUT if out_path else gsubprocess.PIPE,
                              start_new_session=True)
    except OSError as e:
        return Result(None, error=f"cannot start {argv[0]}: {e.strerror}")
    finally:
        if out_path:
            out.close()
    try:
        o, e = p.communicate(timeout=timeout_s)
        return Result(p.returncode, o or b"", e or b"", duration_s=time.monotonic() - t0)
    except gsubprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        o, e = p.communicate()
        return Result(p.returncode, o or b"", e or b"", True, duration_s=time.monotonic() - t0)
