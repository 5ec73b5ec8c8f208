#!/usr/bin/env python3
"""How fast can a gevent process start agent CLIs? (the fork/exec floor, and what it costs)

    python bench/peers/spawn_probe.py [-n 2000] [-w 8] [--ballast-mib 0]

Compares, with W greenlets running N subprocesses in total:
  popen_true      gevent.subprocess.Popen(["true"]).wait()              (the floor as usually written)
  popen_round     tinytownd.runner.run("true", ...): sh -c, stdin pipe + feeder, log file, setsid
  spawn_true      os.posix_spawn(true) + a libev child watcher          (vfork: no page-table copy)
  spawn_round     spawn_round() below: the same contract as runner.run, on posix_spawn
--ballast-mib grows the parent (fork cost grows with RSS; posix_spawn's does not).

spawn_round() is a drop-in proposal for tinytownd.runner.run's spawn: `sh -c` with the working
directory set by the shell (posix_spawn has no chdir action in Python), prompt on a stdin pipe
(written at once when it fits the pipe buffer, else by a feeder greenlet), stdout+stderr to the
round log, its own session (setsid) so the whole group can be killed, and the exit status from a
libev child watcher registered before the loop runs again (no race with gevent's SIGCHLD reaper).
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent import subprocess as gsp  # noqa: E402
from gevent.hub import get_hub  # noqa: E402

SH = "/bin/sh"


class Spawned:
    """A posix_spawn'ed child watched by libev (cooperative wait with timeout)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None
        self._done = gevent.event.Event()
        self._w = get_hub().loop.child(pid, False)
        self._w.start(self._on_exit)

    def _on_exit(self, *args) -> None:
        self._w.stop()
        st = self._w.rstatus
        self.returncode = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
        self._done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        self._done.wait(timeout)
        return self.returncode

    def killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def spawn_round(command: str, *, prompt: str, env: dict, cwd: str, log_path: str,
                timeout_s: float | None) -> tuple[int | None, bool, float]:
    """(exit code, timed out, duration) — runner.run's contract minus should_stop polling."""
    t0 = time.monotonic()
    data = prompt.encode()
    r, w = os.pipe()
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    script = f"cd -- {shlex.quote(cwd)} || exit 126\n{command}"
    try:
        pid = os.posix_spawn(SH, ["sh", "-c", script], env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, logfd, 1),
            (os.POSIX_SPAWN_DUP2, logfd, 2)])
        child = Spawned(pid)  # registered before we yield: no race with the SIGCHLD reaper
    finally:
        os.close(r)
        os.close(logfd)
    feeder = None
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        n = os.write(w, data) if data else 0
    except OSError as e:  # EPIPE: the CLI exited without reading; EAGAIN: pipe full
        n = len(data) if e.errno == errno.EPIPE else 0
    if n < len(data):
        feeder = gevent.spawn(_feed, w, data[n:])
    else:
        os.close(w)
    code = child.wait(timeout_s)
    timed_out = code is None
    if timed_out:
        child.killpg(signal.SIGTERM)
        if child.wait(3.0) is None:
            child.killpg(signal.SIGKILL)
            child.wait()
        code = child.returncode
    if feeder is not None:
        feeder.kill()
    return code, timed_out, time.monotonic() - t0


def _feed(fd: int, data: bytes) -> None:
    from gevent.os import nb_write
    try:
        while data:
            n = nb_write(fd, data)
            data = data[n:]
    except OSError:
        pass
    finally:
        os.close(fd)


def loop(n: int, w: int, fn) -> float:
    left = [n]

    def worker():
        while left[0] > 0:
            left[0] -= 1
            fn()
    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(w)], raise_error=True)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--ballast-mib", type=int, default=0)
    a = ap.parse_args()
    ballast = bytearray(a.ballast_mib << 20) if a.ballast_mib else None
    if ballast:
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
    tmp = tempfile.mkdtemp(prefix="ttb-spawn-")
    log = os.path.join(tmp, "round.log")
    env = dict(os.environ)
    prompt = "do the thing\n" * 20
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

    def popen_true():
        p = gsp.Popen(["true"], stdin=gsp.DEVNULL)
        assert p.wait() == 0

    def spawn_true():
        pid = os.posix_spawn("/bin/true", ["true"], env)
        assert Spawned(pid).wait() == 0

    def popen_round():
        from tinytownd.runtime import runner
        res = runner.run("true", prompt=prompt, env=env, cwd=tmp, log_path=log, timeout_s=60)
        assert res.exit_code == 0, res

    def fast_round():
        code, _, _ = spawn_round("true", prompt=prompt, env=env, cwd=tmp, log_path=log,
                                 timeout_s=60)
        assert code == 0

    out = {"n": a.n, "workers": a.w, "ballast_mib": a.ballast_mib}
    for name, fn in (("popen_true", popen_true), ("spawn_true", spawn_true),
                     ("popen_round", popen_round), ("spawn_round", fast_round)):
        try:
            out[name + "_per_s"] = round(loop(a.n, a.w, fn), 1)
        except Exception as e:  # e.g. tinytownd.runner missing
            out[name + "_per_s"] = None
            out[name + "_error"] = f"{type(e).__name__}: {e}"
    # timeout kills the group
    code, timed_out, dur = spawn_round("sleep 30", prompt="", env=env, cwd=tmp, log_path=log,
                                       timeout_s=0.3)
    out["timeout_check"] = {"timed_out": timed_out, "code": code, "secs": round(dur, 2)}
    print(json.dumps(out), flush=True)
    del ballast


if __name__ == "__main__":
    main()


def run_compatible(command: str, *, prompt: str, env: dict, cwd: str, log_path: str,
                   timeout_s: float | None, should_stop=None, on_start=None,
                   poll_s: float = 0.5):
    """tinytownd.runner.run's exact contract on posix_spawn (proposal; used by the benches to
    measure what the change would buy: `bench_e2e.py cmdcount --fast-spawn`)."""
    from tinytownd.runtime.runner import CliResult
    t0 = time.monotonic()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    data = prompt.encode("utf-8")
    try:
        logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as e:
        return CliResult(None, False, False, 0.0, None, error=f"cannot open log {log_path}: {e}")
    r, w = os.pipe()
    script = f"cd -- {shlex.quote(cwd)} || exit 126\n{command}" if cwd else command
    try:
        try:
            pid = os.posix_spawn(SH, ["sh", "-c", script], env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, logfd, 1),
                (os.POSIX_SPAWN_DUP2, logfd, 2)])
        except OSError as e:
            os.close(w)
            return CliResult(None, False, False, time.monotonic() - t0, None,
                             error=f"cannot start CLI: {e}")
        child = Spawned(pid)
    finally:
        os.close(r)
        os.close(logfd)
    if on_start is not None:
        try:
            on_start(pid)
        except Exception:
            pass
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        n = os.write(w, data) if data else 0
    except OSError as e:
        n = len(data) if e.errno in (errno.EPIPE,) else 0
    feeder = gevent.spawn(_feed, w, data[n:]) if n < len(data) else None
    if feeder is None:
        os.close(w)
    deadline = None if timeout_s is None else t0 + timeout_s
    timed_out = killed = False
    try:
        while True:
            wait = poll_s if deadline is None else min(poll_s, max(0.0, deadline - time.monotonic()))
            if child.wait(wait) is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
            elif should_stop is not None and should_stop():
                killed = True
            else:
                continue
            child.killpg(signal.SIGTERM)
            if child.wait(3.0) is None:
                child.killpg(signal.SIGKILL)
                child.wait(3.0)
            break
    except BaseException:
        child.killpg(signal.SIGKILL)
        raise
    finally:
        if feeder is not None:
            feeder.kill(block=False)
    return CliResult(child.returncode, timed_out, killed, time.monotonic() - t0, pid)
