"""Running one agent CLI round as a subprocess (gevent.subprocess), the way Tinytown does
(`sh -c <command>`), plus what it lacks: a per-round timeout that kills the whole process group,
the prompt on stdin *and* in a file, output to a per-round log, and the output tail as the result.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

import gevent
from gevent import subprocess

KILL_GRACE_S = 3.0


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
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(data) == nbytes and size > nbytes and "\n" in text[:-1]:
        text = text[text.index("\n") + 1:]
    return text.strip()


def kill_group(proc, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL it if the leader is still there after `grace_s`."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                continue
            # leader gone: make sure stragglers in the group go too
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass


def run(command: str, *, prompt: str, env: dict, cwd: str, log_path: str,
        timeout_s: float | None, should_stop=None, on_start=None, poll_s: float = 0.5) -> RunResult:
    """Run `sh -c command` in its own session; prompt on stdin; output → log_path.

    `should_stop()` is polled every `poll_s` while the CLI runs; when it returns true the process
    group is killed (result.killed). `on_start(pid)` is called right after the spawn.
    """
    t0 = time.monotonic()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    try:
        logf = open(log_path, "ab")
    except OSError as e:
        return RunResult(None, False, False, 0.0, None, error=f"cannot open log {log_path}: {e}")
    try:
        try:
            proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=logf,
                                    stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=False)  # fds are CLOEXEC; gevent closes
            # every open fd in Python otherwise (~1 ms per 100 open sockets of the daemon)
        except OSError as e:
            return RunResult(None, False, False, time.monotonic() - t0, None,
                             error=f"cannot start CLI: {e}")
    finally:
        logf.close()
    if on_start is not None:
        try:
            on_start(proc.pid)
        except Exception:
            pass
    feeder = gevent.spawn(_feed, proc, prompt.encode("utf-8"))
    deadline = None if timeout_s is None else t0 + timeout_s
    timed_out = killed = False
    try:
        while True:
            wait = poll_s
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pass
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
        feeder.kill(block=False)
    return RunResult(proc.returncode, timed_out, killed, time.monotonic() - t0, proc.pid)


def _feed(proc, data: bytes) -> None:
    """Write the prompt to stdin; a CLI that exits without reading it is normal."""
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except (BrokenPipeError, ConnectionResetError, ValueError):
        pass
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.EINVAL):
            raise
    finally:
        try:
            proc.stdin.close()
        except (OSError, ValueError):
            pass
