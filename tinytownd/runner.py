"""Running one agent CLI round as a subprocess, the way Tinytown does (`sh -c <command>`), plus
what it lacks: a per-round timeout that kills the whole process group,
the prompt on stdin *and* in a file, output to a per-round log, and the output tail as the result.
"""
from __future__ import annotations

import errno
import os
import shlex
import signal
import time
from dataclasses import dataclass

import socket as _socket

import gevent
import gevent.os
from gevent import subprocess
from gevent.socket import wait_read

KILL_GRACE_S = 3.0

try:   # gevent's os.close also looks for watchers of the fd: not needed for fds never watched
    from gevent.monkey import get_original as _get_original
    _close = _get_original("os", "close")
except ImportError:  # pragma: no cover
    _close = os.close


@dataclass
class RunResult:
    exit_code: int | None      # None: could not start
    timed_out: bool
    killed: bool               # stopped on request (kill / lease lost / shutdown)
    duration_s: float
    pid: int | None
    error: str | None = None   # spawn error text

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.killed


def tail(path: str, nbytes: int) -> str:
    """The last `nbytes` of a file, decoded leniently (whole lines when possible)."""
    if nbytes <= 0:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - nbytes), os.SEEK_SET)
        chunks = []
        while True:                      # to the end, as the file is now
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        data = b"".join(chunks)
    except OSError:
        return ""
    finally:
        _close(fd)
    text = data.decode("utf-8", errors="replace")
    if len(data) == nbytes and size > nbytes and "\n" in text[:-1]:
        text = text[text.index("\n") + 1:]
    return text.strip()


class _Proc:
    """A spawned CLI and a cooperative wait on it.

    Fast path: os.posix_spawn (vfork speed: ~1 ms instead of ~8 ms for gevent.subprocess, which
    forks the whole Python process) and a pidfd that becomes readable when the process exits,
    waited on by the gevent loop. Fallback (no pidfd): gevent.subprocess.Popen.
    """

    def __init__(self, pid: int, pidfd: int | None = None, popen=None):
        self.pid = pid
        self.pidfd = pidfd
        self.popen = popen
        self.returncode: int | None = None

    def wait(self, timeout: float | None) -> bool:
        """True once the process has exited (returncode set), False on timeout."""
        if self.returncode is not None:
            return True
        if self.popen is not None:
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            self.returncode = self.popen.returncode
            return True
        try:
            wait_read(self.pidfd, timeout=max(0.001, timeout) if timeout is not None else None)
        except _socket.timeout:
            return False
        try:
            # gevent's os.waitpid: when libev's SIGCHLD handler (active while a gevent.subprocess
            # child such as redis-server exists) reaped this pid first, gevent kept its status and
            # returns it here (tests/test_worker_runner.py pins this).
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:   # reaped by non-gevent code: the status is gone
            self.returncode = 255
        try:
            os.close(self.pidfd)
        except OSError:
            pass
        return True


_SIGDEF = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM",
                                             "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2")
                if hasattr(signal, n))
_fast_ok = hasattr(os, "posix_spawn") and hasattr(os, "pidfd_open")


def _spawn(command: str, env: dict, cwd: str, log_fd: int) -> tuple[_Proc, int]:
    """Start `sh -c command` in cwd, in a new session, stdout+stderr → log_fd.
    Returns the process and the write end of its stdin pipe."""
    global _fast_ok
    r, w = os.pipe()
    try:
        if _fast_ok:
            try:
                # posix_spawn has no chdir here: one shell does `cd` then runs the command
                script = f"cd -- {shlex.quote(cwd)} || exit 127\n{command}"
                pid = os.posix_spawn("/bin/sh", ["sh", "-c", script], env,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, r, 0),
                                                   (os.POSIX_SPAWN_DUP2, log_fd, 1),
                                                   (os.POSIX_SPAWN_DUP2, log_fd, 2)],
                                     setsid=True, setsigdef=_SIGDEF, setsigmask=())
            except OSError:
                raise
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:           # kernel without pidfd: use the slow path from now on
                _fast_ok = False
                proc = _Proc(pid)
                proc.popen = _Reaper(pid)
                return proc, w
            return _Proc(pid, pidfd), w
        popen = subprocess.Popen(["sh", "-c", command], stdin=r, stdout=log_fd,
                                 stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                 start_new_session=True, close_fds=False)
        return _Proc(popen.pid, popen=popen), w
    except BaseException:
        os.close(w)
        raise
    finally:
        _close(r)


class _Reaper:
    """Popen-like wait for a pid without pidfd (polling; only on old kernels)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("sh", timeout)
            gevent.sleep(0.05)


def kill_group(proc: _Proc, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL it if the leader is still there after `grace_s`.
    Stragglers left in the group after the leader exits get SIGKILL too."""
    pgid = proc.pid  # new session: the leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.wait(grace_s)
        return
    exited = proc.wait(grace_s)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not exited:
        proc.wait(grace_s)


def run(command: str, *, prompt: str, env: dict, cwd: str, log_path: str,
        timeout_s: float | None, should_stop=None, on_start=None, poll_s: float = 0.5) -> RunResult:
    """Run `sh -c command` in its own session; prompt on stdin; output → log_path.

    `should_stop()` is polled every `poll_s` while the CLI runs; when it returns true the process
    group is killed (result.killed). `on_start(pid)` is called right after the spawn.
    """
    t0 = time.monotonic()
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    try:
        try:
            log_fd = os.open(log_path, flags, 0o644)
        except FileNotFoundError:       # the log directory is made on first use
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            log_fd = os.open(log_path, flags, 0o644)
    except (OSError, ValueError) as e:
        return RunResult(None, False, False, 0.0, None, error=f"cannot open log {log_path}: {e}")
    try:
        try:
            proc, stdin_w = _spawn(command, env, cwd, log_fd)
        except (OSError, ValueError) as e:
            return RunResult(None, False, False, time.monotonic() - t0, None,
                             error=f"cannot start CLI: {e}")
    finally:
        _close(log_fd)
    if on_start is not None:
        try:
            on_start(proc.pid)
        except Exception:
            pass
    data = prompt.encode("utf-8")
    feeder = None
    try:
        gevent.os.make_nonblocking(stdin_w)
        n = os.write(stdin_w, data) if data else 0   # usually all of it: the pipe holds 64 KiB
    except BlockingIOError:
        n = 0
    except OSError:                                  # EPIPE: the CLI does not read stdin
        n = len(data)
    if n >= len(data):
        _close(stdin_w)                              # never watched (the feeder's fd is)
    else:
        feeder = gevent.spawn(_feed, stdin_w, data[n:])
    deadline = None if timeout_s is None else t0 + timeout_s
    timed_out = killed = False
    try:
        while True:
            wait = poll_s
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            if proc.wait(wait):
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                kill_group(proc)
                break
            if should_stop is not None and should_stop():
                killed = True
                kill_group(proc)
                break
    except BaseException:
        # greenlet killed (shutdown): never leave the CLI behind
        kill_group(proc, grace_s=1.0)
        raise
    finally:
        if feeder is not None:
            feeder.kill(block=False)
    return RunResult(proc.returncode, timed_out, killed, time.monotonic() - t0, proc.pid)


def _feed(fd: int, data: bytes) -> None:
    """Write the prompt to the CLI's stdin; a CLI that exits without reading it is normal."""
    try:
        gevent.os.make_nonblocking(fd)
        view = memoryview(data)
        while view:
            n = gevent.os.nb_write(fd, view)
            view = view[n:]
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.EINVAL, errno.EBADF):
            raise
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
