"""Running one agent CLI round as a subprocess, the way Tinytown does (`sh -c <command>`), plus
what it lacks: a per-round timeout, the prompt on stdin *and* in a file, output into a round log
of bounded size (capture.py) and its tail as the result, and a round that ends as a whole: when
the CLI exits, whatever it left running in its process group is ended too (SIGTERM, SIGKILL after
KILL_GRACE_S), and the lifeline (lifeline.py) ends the group if the daemon itself dies.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass

import gevent
import gevent.os

from . import process
from .capture import CappedLog, pump
from .process import KILL_GRACE_S, close_fd, kill_group

OUTPUT_WAIT_S = 0.2     # after the CLI exits, how long its output may take to drain


@dataclass
class CliResult:
    exit_code: int | None      # None: could not start
    timed_out: bool
    killed: bool               # stopped on request (kill / lease lost / shutdown)
    duration_s: float
    pid: int | None
    error: str | None = None   # spawn error text
    output: str = ""           # the last `tail_bytes` of the CLI's output
    output_bytes: int = 0      # bytes the CLI printed
    log_bytes: int = 0         # bytes of its round log on disk (0: no log file)
    log_error: str | None = None   # the round log could not be written (the round still ran)
    inactive: bool = False     # ended by the inactivity timeout (timed_out is set too)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.killed


def run(command: str, *, prompt: str, env: dict, cwd: str, log_path: str,
        timeout_s: float | None, should_stop=None, on_start=None, poll_s: float = 0.5,
        tail_bytes: int = 0, log_head_bytes: int = 1 << 20, log_tail_bytes: int = 1 << 20,
        exports: dict | None = None, lifeline=None,
        inactivity_timeout_s: float | None = None, observer=None) -> CliResult:
    """Run `sh -c command` in its own session; prompt on stdin; output → a capped round log.

    `exports` are extra environment variables set by the shell line (TINYTOWN_TASK_ID), so that
    `env` can be one unchanging dict per agent. `should_stop()` is polled every `poll_s` while
    the CLI runs; when it returns true the process group is killed (result.killed).
    `on_start(pid)` is called right after the spawn. `inactivity_timeout_s`: a round whose
    output has not grown for that long is ended as a timeout. `observer(data)` also gets every
    chunk of output (a structured-output parser, agent_cli/output.py).
    """
    t0 = time.monotonic()
    out_r, out_w = os.pipe()
    try:
        proc, stdin_w = process.spawn(command, env, cwd, out_w, exports)
    except (OSError, ValueError) as e:
        close_fd(out_r)
        return CliResult(None, False, False, time.monotonic() - t0, None,
                         error=f"cannot start CLI: {e}")
    finally:
        close_fd(out_w)
    if lifeline is not None:
        lifeline.track(proc.pid)
    if on_start is not None:
        try:
            on_start(proc.pid)
        except Exception:
            pass
    fcntl.fcntl(out_r, fcntl.F_SETFL, fcntl.fcntl(out_r, fcntl.F_GETFL) | os.O_NONBLOCK)
    log = CappedLog(log_path, log_head_bytes, log_tail_bytes, tail_bytes, observer)
    reader = gevent.spawn(pump, out_r, log)
    process.running += 1
    try:
        res = _supervise(proc, stdin_w, prompt, t0, timeout_s, should_stop, poll_s, log,
                         inactivity_timeout_s)
    finally:
        process.running -= 1
        end_group(proc.pid, lifeline)
    reader.join(OUTPUT_WAIT_S)    # its leftovers may hold the pipe: the pump ends on its own
    res.output = log.result()
    res.output_bytes = log.total
    res.log_bytes = log.on_disk
    res.log_error = log.error
    return res


def end_group(pgid: int, lifeline=None) -> None:
    """The round is over: end what is left of its process group (the CLI's background children),
    SIGTERM now and SIGKILL after KILL_GRACE_S, without holding up the round."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        if lifeline is not None:
            lifeline.untrack(pgid)
        return
    gevent.spawn_later(KILL_GRACE_S, _kill_rest, pgid, lifeline)


def _kill_rest(pgid: int, lifeline) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if lifeline is not None:
        lifeline.untrack(pgid)


def _supervise(proc, stdin_w: int, prompt: str, t0: float, timeout_s: float | None,
               should_stop, poll_s: float, log: CappedLog,
               inactivity_timeout_s: float | None) -> CliResult:
    """Feed the prompt, then wait for the CLI: timeout, inactivity and should_stop kill its
    group."""
    data = prompt.encode("utf-8", "surrogateescape")
    feeder = None
    try:
        gevent.os.make_nonblocking(stdin_w)
        n = os.write(stdin_w, data) if data else 0   # usually all of it: the pipe holds 64 KiB
    except BlockingIOError:
        n = 0
    except OSError:                                  # EPIPE: the CLI does not read stdin
        n = len(data)
    if n >= len(data):
        close_fd(stdin_w)                            # never watched (the feeder's fd is)
    else:
        feeder = gevent.spawn(_feed, stdin_w, data[n:])
    deadline = None if timeout_s is None else t0 + timeout_s
    timed_out = killed = inactive = False
    try:
        while True:
            wait = poll_s
            now = time.monotonic()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if inactivity_timeout_s:
                wait = min(wait, max(0.0, log.last_output + inactivity_timeout_s - now))
            if proc.wait(wait):
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
            elif inactivity_timeout_s and now >= log.last_output + inactivity_timeout_s:
                timed_out = inactive = True
            elif should_stop is not None and should_stop():
                killed = True
            if timed_out or killed:
                kill_group(proc)
                break
    except BaseException:
        # greenlet killed (shutdown): never leave the CLI behind
        kill_group(proc, grace_s=1.0)
        raise
    finally:
        if feeder is not None:
            feeder.kill(block=False)
    return CliResult(proc.returncode, timed_out, killed, time.monotonic() - t0, proc.pid,
                     inactive=inactive)


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
