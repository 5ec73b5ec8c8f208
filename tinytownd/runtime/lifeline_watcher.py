"""The lifeline watcher: a small process that ends the daemon's agent CLIs when the daemon dies.

Run by lifeline.py as `python -I -S lifeline_watcher.py STATE_FILE GRACE_S` with a pipe on stdin
(stdlib only: it must not import the daemon's package). The daemon writes `+PGID` when it starts
a CLI (its own process group, led by the CLI's shell) and `-PGID` when that group is gone. The
watcher keeps the table, with each group's start time, in STATE_FILE (so that a daemon started
after a crash of both finds them). EOF on stdin means the daemon is gone: every group still
listed gets SIGTERM, then SIGKILL after GRACE_S, and the watcher exits.
"""
import json
import os
import select
import signal
import sys
import time

WRITE_EVERY_S = 0.1


def start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot): tells a pid from a later reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data.rsplit(b")", 1)[1].split()[19])


def end_groups(groups, grace_s):
    """SIGTERM each group that is still the one recorded, then SIGKILL what is left."""
    live = []
    for pgid, started in groups.items():
        if started is not None and start_time(pgid) not in (started, None):
            continue          # the pid was reused by something else: not ours
        try:
            os.killpg(pgid, signal.SIGTERM)
            live.append(pgid)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [g for g in live if group_exists(g)]
    for pgid in live:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def group_exists(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def save(path, groups):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({str(k): v for k, v in groups.items()}, f)
    os.replace(tmp, path)


class Stop(Exception):
    pass


def _stop(*_):
    raise Stop


def main(path, grace_s):
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)     # a terminal's ^C is for the daemon, not for us
    signal.signal(signal.SIGTERM, _stop)       # told to go: end what is listed, as on EOF
    groups = {}
    try:
        watch(path, groups)
    except Stop:
        pass
    end_groups(groups, grace_s)
    try:
        os.unlink(path)
    except OSError:
        pass


def watch(path, groups):
    dirty, last_write, buf = False, 0.0, b""
    fd = sys.stdin.fileno()
    while True:
        timeout = WRITE_EVERY_S if dirty else None
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line[:1] == b"+":
                    pid = int(line[1:])
                    groups[pid] = start_time(pid)
                elif line[:1] == b"-":
                    groups.pop(int(line[1:]), None)
            dirty = True
        if dirty and time.monotonic() - last_write >= WRITE_EVERY_S:
            save(path, groups)
            dirty, last_write = False, time.monotonic()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
