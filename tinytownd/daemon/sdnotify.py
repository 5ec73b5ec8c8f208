"""systemd's notify protocol, hand-written (sd_notify(3)): one datagram of KEY=VALUE lines to
$NOTIFY_SOCKET ('@' = abstract namespace). A no-op when NOTIFY_SOCKET is unset. Stdlib only.
"""
from __future__ import annotations

import os
import socket
import time


def notify(*lines: str, env: dict | None = None) -> bool:
    """Send the lines as one datagram. Returns False when there is nowhere to send or it failed."""
    addr = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), addr)
        return True
    except OSError:
        return False


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """RELOADING=1 and MONOTONIC_USEC in the same datagram (Type=notify-reload needs both)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (WATCHDOG_USEC/2), or None when the watchdog is off."""
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6
