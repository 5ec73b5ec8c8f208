"""Starting an agent CLI and waiting for it: `sh -c <command>` in a session of its own.

Fast path: posix_spawn (vfork speed: ~1 ms instead of ~8 ms for gevent.subprocess, which forks the
whole Python process), on the spawn thread while other CLIs run (spawn.py: the loop goes on during
the exec), and a pidfd that becomes readable when the process exits, waited on by the gevent loop.
Fallback (no pidfd): gevent.subprocess.Popen. `kill_group` ends a CLI and everything it started.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket as _socket
import time

import gevent
from gevent import subprocess
from gevent.socket import wait_read

from tinytownd.runtime import spawn as _spawner

KILL_GRACE_S = 3.0

try:   # gevent's os.close also looks for watchers of the fd: not needed for fds never watched
    from gevent.monkey import get_original as _get_original
    close_fd = _get_original("os", "close")
except ImportError:  # pragma: no cover
    close_fd = os.close


class CliProcess:
    """A spawned CLI (the leader of its process group) and a cooperative wait on it."""

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
running = 0               # CLIs that runner.run() is running right now


def spawn(command: str, env: dict, cwd: str, out_fd: int,
          exports: dict | None = None) -> tuple[CliProcess, int]:
    """Start `sh -c command` in cwd, in a new session, stdout+stderr → out_fd, with `env` plus
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
            busy = running >= THREAD_WHEN_RUNNING
            sp = _spawner.Spawner.get(_SIGDEF) if SPAWN_THREAD and busy else None
            reaper = sp.reaper if sp is not None else None
            if sp is not None:
                pid = sp.spawn("/bin/sh", argv, env, ((r, 0), (out_fd, 1), (out_fd, 2)))
                if pid in reaper.statuses:    # exited and reaped already: no pidfd to take
                    proc = CliProcess(pid, reaper=reaper)
                    proc.set_status(reaper.exit_status(pid))
                    return proc, w
            else:
                pid = os.posix_spawn("/bin/sh", argv, env,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, r, 0),
                                                   (os.POSIX_SPAWN_DUP2, out_fd, 1),
                                                   (os.POSIX_SPAWN_DUP2, out_fd, 2)],
                                     setsid=True, setsigdef=_SIGDEF, setsigmask=())
            try:
                # (no loop iteration since the check above: libev cannot have reaped it since)
                pidfd = os.pidfd_open(pid)
            except OSError:           # kernel without pidfd: use the slow path from now on
                _fast_ok = False
                proc = CliProcess(pid)
                proc.popen = _PidPoller(pid, reaper)
                return proc, w
            return CliProcess(pid, pidfd, reaper=reaper), w
        popen = subprocess.Popen(["sh", "-c", command], stdin=r, stdout=out_fd,
                                 stderr=subprocess.STDOUT, cwd=cwd, env={**env, **(exports or {})},
                                 start_new_session=True, close_fds=False)
        return CliProcess(popen.pid, popen=popen), w
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


def kill_group(proc: CliProcess, grace_s: float = KILL_GRACE_S) -> None:
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
