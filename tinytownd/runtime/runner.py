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

from tinytownd.runtime import spawn as _spawner

KILL_GRACE_S = 3.0

try:   # gevent's os.close also looks for watchers of the fd: not needed for fds never watched
    from gevent.monkey import get_original as _get_original
    close_fd = _get_original("os", "close")
except ImportError:  # pragma: no cover
    close_fd = os.close


@dataclass
class CliResult:
    exit_code: int | None      # None: could not start
    timed_out: bool
    killed: bool               # stopped on request (kill / lease lost / shutdown)
    duration_s: float
    pid: int | None
    error: str | None = None   # spawn error text
    output: str = ""           # the last `tail_bytes` of the CLI's output
    output_bytes: int = 0      # size of the round log when the CLI exited
    log_removed: bool = False  # the CLI printed nothing, so its round log was deleted

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
        return _tail_fd(fd, os.fstat(fd).st_size, nbytes)
    except OSError:
        return ""
    finally:
        close_fd(fd)


def _tail_fd(fd: int, size: int, nbytes: int) -> str:
    """The last `nbytes` of the first `size` bytes of an open file (pread: the offset of an
    O_APPEND fd shared with the CLI is left alone)."""
    start = max(0, size - nbytes)
    data = os.pread(fd, size - start, start) if size > start else b""
    text = data.decode("utf-8", errors="replace")
    if start > 0 and "\n" in text[:-1]:
        text = text[text.index("\n") + 1:]
    return text.strip()


class _Proc:
    """A spawned CLI and a cooperative wait on it.

    Fast path: posix_spawn (vfork speed: ~1 ms instead of ~8 ms for gevent.subprocess, which
    forks the whole Python process), on the spawn thread where possible (tinytownd/spawn.py: the
    loop runs on during the exec), and a pidfd that becomes readable when the process exits,
    waited on by the gevent loop. Fallback (no pidfd): gevent.subprocess.Popen.
    """

    def __init__(self, pid: int, pidfd: int | None = None, popen=None, reaper=None):
        self.pid = pid
        self.pidfd = pidfd
        self.popen = popen
        self.reaper = reaper          # spawn.Reaper when spawned off the loop thread
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
        if self.reaper is not None:
            self.set_status(self.reaper.exit_status(self.pid))
        else:
            try:
                # gevent's os.waitpid: when libev's SIGCHLD handler reaped this pid first, gevent
                # kept its status (its posix_spawn watches the pid) and returns it here
                # (tests/test_worker_runner.py pins this).
                self.set_status(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:
                self.set_status(None)
        try:
            os.close(self.pidfd)
        except OSError:
            pass
        return True

    def set_status(self, status: int | None) -> None:
        self.returncode = _exitcode(status)


def _exitcode(status: int | None) -> int:
    """From a wait status; None: reaped by non-gevent code, the status is gone (255)."""
    return 255 if status is None else os.waitstatus_to_exitcode(status)


_SIGDEF = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM",
                                             "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2")
                if hasattr(signal, n))
_fast_ok = hasattr(os, "posix_spawn") and hasattr(os, "pidfd_open")
SPAWN_THREAD = True   # spawn.Spawner where it works; False: os.posix_spawn on the loop thread
THREAD_WHEN_RUNNING = 2   # ... and only while this many CLIs of this process already run
_running = 0              # CLIs that run() is running right now


def _spawn(command: str, env: dict, cwd: str, log_fd: int,
           exports: dict | None = None) -> tuple[_Proc, int]:
    """Start `sh -c command` in cwd, in a new session, stdout+stderr → log_fd, with `env` plus
    `exports` (set by the shell line, so `env` itself stays the same from round to round).
    Returns the process and the write end of its stdin pipe."""
    global _fast_ok
    r, w = os.pipe()
    try:
        if _fast_ok:
            # posix_spawn has no chdir here: one shell does `cd` then runs the command
            pre = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (exports or {}).items())
            argv = ["sh", "-c", f"cd -- {shlex.quote(cwd)} || exit 127\n{pre}{command}"]
            # Busy (other rounds running): exec off the loop thread, so their ends and the
            # dispatcher are not stalled ~0.35 ms per spawn. Quiet: spawn right here, one loop
            # iteration sooner (lower pickup latency when it matters most).
            busy = _running >= THREAD_WHEN_RUNNING
            sp = _spawner.Spawner.get(_SIGDEF) if SPAWN_THREAD and busy else None
            reaper = sp.reaper if sp is not None else None
            if sp is not None:
                pid = sp.spawn("/bin/sh", argv, env, ((r, 0), (log_fd, 1), (log_fd, 2)))
                if pid in reaper.statuses:    # exited and reaped already: no pidfd to take
                    proc = _Proc(pid, reaper=reaper)
                    proc.set_status(reaper.exit_status(pid))
                    return proc, w
            else:
                pid = os.posix_spawn("/bin/sh", argv, env,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, r, 0),
                                                   (os.POSIX_SPAWN_DUP2, log_fd, 1),
                                                   (os.POSIX_SPAWN_DUP2, log_fd, 2)],
                                     setsid=True, setsigdef=_SIGDEF, setsigmask=())
            try:
                # (no loop iteration since the check above: libev cannot have reaped it since)
                pidfd = os.pidfd_open(pid)
            except OSError:           # kernel without pidfd: use the slow path from now on
                _fast_ok = False
                proc = _Proc(pid)
                proc.popen = _PidPoller(pid, reaper)
                return proc, w
            return _Proc(pid, pidfd, reaper=reaper), w
        popen = subprocess.Popen(["sh", "-c", command], stdin=r, stdout=log_fd,
                                 stderr=subprocess.STDOUT, cwd=cwd, env={**env, **(exports or {})},
                                 start_new_session=True, close_fds=False)
        return _Proc(popen.pid, popen=popen), w
    except BaseException:
        os.close(w)
        raise
    finally:
        close_fd(r)


class _PidPoller:
    """Popen-like wait for a pid without pidfd (polling; only on old kernels)."""

    def __init__(self, pid: int, reaper=None):
        self.pid = pid
        self.reaper = reaper
        self.returncode = None

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.reaper is not None:
                if self.reaper.has_exited(self.pid):
                    self.returncode = _exitcode(self.reaper.exit_status(self.pid))
                    return self.returncode
            else:
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
        timeout_s: float | None, should_stop=None, on_start=None, poll_s: float = 0.5,
        tail_bytes: int = 0, keep_empty_log: bool = True,
        exports: dict | None = None) -> CliResult:
    """Run `sh -c command` in its own session; prompt on stdin; output → log_path.

    `exports` are extra environment variables set by the shell line (TINYTOWN_TASK_ID), so that
    `env` can be one unchanging dict per agent. `should_stop()` is polled every `poll_s` while
    the CLI runs; when it returns true the process group is killed (result.killed).
    `on_start(pid)` is called right after the spawn.
    The log stays open until the CLI exits, so its size and last `tail_bytes` (result.output) come
    from that fd; with keep_empty_log=False a log the CLI wrote nothing to is deleted (a new file
    that persists costs far more than one created and unlinked at once, and grows the directory).
    """
    global _running
    t0 = time.monotonic()
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    try:
        try:
            log_fd = os.open(log_path, flags, 0o644)
        except FileNotFoundError:       # the log directory is made on first use
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            log_fd = os.open(log_path, flags, 0o644)
    except (OSError, ValueError) as e:
        return CliResult(None, False, False, 0.0, None, error=f"cannot open log {log_path}: {e}")
    try:
        try:
            proc, stdin_w = _spawn(command, env, cwd, log_fd, exports)
        except (OSError, ValueError) as e:
            return CliResult(None, False, False, time.monotonic() - t0, None,
                             error=f"cannot start CLI: {e}")
        if on_start is not None:
            try:
                on_start(proc.pid)
            except Exception:
                pass
        _running += 1
        try:
            res = _supervise(proc, stdin_w, prompt, t0, timeout_s, should_stop, poll_s)
        finally:
            _running -= 1
        try:
            res.output_bytes = size = os.fstat(log_fd).st_size
            if size == 0 and not keep_empty_log:
                os.unlink(log_path)
                res.log_removed = True
            elif tail_bytes > 0:
                res.output = _tail_fd(log_fd, size, tail_bytes)
        except OSError:
            pass
        return res
    finally:
        close_fd(log_fd)


def _supervise(proc: _Proc, stdin_w: int, prompt: str, t0: float, timeout_s: float | None,
               should_stop, poll_s: float) -> CliResult:
    """Feed the prompt, then wait for the CLI: timeout and should_stop kill its group."""
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
        close_fd(stdin_w)                              # never watched (the feeder's fd is)
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
    return CliResult(proc.returncode, timed_out, killed, time.monotonic() - t0, proc.pid)


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
