"""The one teardown helper: nothing a test started may outlive it."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def pids_under(root: Path) -> list[int]:
    """Processes whose working directory is under `root` (redis children, agent CLIs)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{d}/cwd").startswith(str(root)):
                out.append(int(d))
        except OSError:
            pass
    return out


def kill_under(root: Path, *, extra_pids=()) -> None:
    """SIGKILL what runs under `root`: the redis-server of a killed daemon (its pid file, or a pid
    the test saw) and any process whose cwd is there."""
    pids = set(extra_pids)
    pidf = Path(root) / "redis" / "redis.pid"
    try:
        pids.add(int(pidf.read_text().strip()))
    except (OSError, ValueError):
        pass
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(str(root)):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pids_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def no_redis_under(root: Path) -> bool:
    """No redis-server process names `root` on its command line."""
    out = subprocess.run(["pgrep", "-af", "redis-server"], capture_output=True, text=True).stdout
    return str(root) not in out
