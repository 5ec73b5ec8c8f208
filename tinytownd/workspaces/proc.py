"""Running git (and a workspace's setup command) without blocking the event loop.

`run(argv)` starts the program with posix_spawn in a session of its own (a few ms; a fork of the
daemon through gevent.subprocess costs ~25 ms), reads its stdout and stderr through non-blocking
pipes and waits on a pidfd, all cooperatively; past `timeout_s` its process group is killed.
Where posix_spawn or pidfds are missing, gevent.subprocess does the same more slowly.
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
    env = os.environ if env is None else env
    if not _fast:
        return _run_popen(exe, argv, env, timeout_s, out_path, t0)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    log_fd = None
    try:
        if out_path is not None:
            log_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            acts = [(os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
        else:
            acts = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        acts.insert(0, (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        try:
            pid = os.posix_spawn(exe, argv, env, file_actions=acts, setsid=True,
                                 setsigdef=_SIGDEF, setsigmask=())
        except OSError as e:
            return Result(None, error=f"cannot start {argv[0]}: {e.strerror}")
        finally:
            for fd in (out_w, err_w) + ((log_fd,) if log_fd is not None else ()):
                os.close(fd)
            out_w = err_w = None
        if lifeline is not None:
            lifeline.track(pid)
        pidfd = os.pidfd_open(pid)
        readers = [gevent.spawn(_drain, out_r), gevent.spawn(_drain, err_r)]
        timed_out = False
        try:
            try:
                wait_read(pidfd, timeout=timeout_s)
            except OSError:     # socket.timeout is an OSError
                timed_out = True
                _kill(pid, pidfd)
            try:
                status = os.waitpid(pid, 0)[1]
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = 255
        except BaseException:
            _kill(pid, pidfd, grace_s=0.5)
            raise
        finally:
            os.close(pidfd)
            if lifeline is not None:
                lifeline.untrack(pid)
        gevent.joinall(readers, timeout=1.0)
        gevent.killall([g for g in readers if not g.dead], block=False)
        return Result(code, readers[0].value or b"", readers[1].value or b"", timed_out,
                      duration_s=time.monotonic() - t0)
    finally:
        for fd in (out_r, err_r, out_w, err_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


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
