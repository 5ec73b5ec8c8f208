"""A CLI never outlives the daemon that started it, and never runs twice beside itself.

Every agent CLI runs in a process group of its own (a new session led by its shell), so the
daemon can end a whole round — the CLI and whatever it started — with one killpg. When the
daemon ends normally it ends its rounds itself. When it is killed (kill -9, OOM killer) nothing of
it runs any more; for that case a small watcher process (lifeline_watcher.py) holds the other end
of a pipe and the list of running groups: the pipe's EOF is the daemon's death, and the watcher
ends the groups (SIGTERM, then SIGKILL after KILL_GRACE_S).

Every CLI also carries TINYTOWND_LIFELINE=<root key>:<daemon instance> in its environment
(cli_env.py; its children inherit it). So the daemon tells the watcher about its groups lazily,
at most every FLUSH_S and only about groups still running then (a round of a quick CLI costs no
write at all): on EOF the watcher ends the groups it was told of *and* the group of every process
whose environment carries this daemon's marker (/proc/PID/environ), which covers a CLI started
in the last FLUSH_S before the daemon died. The told list covers what cleared its environment.

The watcher keeps the list in `<root>/run/cli-groups.json` too. A daemon starting on the same town
root first ends the groups it finds there (when their start time still matches: a pid can be
reused) and those of processes carrying an earlier daemon's marker of this root, so it never runs
a task again while the CLI of the crashed round still runs. An agent CLI that must leave
something running after its round can detach it into a session of its own (`setsid server &`,
and without the marker, `env -u TINYTOWND_LIFELINE`); that is then the agent's business.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import gevent

from . import lifeline_watcher

KILL_GRACE_S = 3.0
FLUSH_S = 0.05     # the watcher hears of a group at most this late (the marker covers the gap)


def root_key(root: Path) -> str:
    """The town root's part of the marker: every daemon on this root shares it."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]


def end_recorded(state_file: Path, log=None, marked: str | None = None,
                 own: str | None = None) -> int:
    """End the groups a previous daemon's watcher left listed, and (`marked`: a root key) those
    of processes whose marker starts with it but is not `own`; returns how many were live."""
    try:
        groups = {int(k): v for k, v in json.loads(state_file.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        groups = {}
    live = {g: t for g, t in groups.items()
            if t is None or lifeline_watcher.start_time(g) == t}
    if marked:
        for g in lifeline_watcher.marked_groups((marked + ":").encode(),
                                                exclude=(own or "").encode()):
            live.setdefault(g, lifeline_watcher.start_time(g))
    if live:
        if log is not None:
            log.warning("ending agent CLIs a previous daemon left running",
                        process_groups=sorted(live))
        lifeline_watcher.end_groups(live, KILL_GRACE_S)
    try:
        state_file.unlink()
    except OSError:
        pass
    return len(live)


class Lifeline:
    def __init__(self, root: Path, log=None):
        self.state_file = Path(root) / "run" / "cli-groups.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        key = root_key(root)
        self.marker = f"{key}:{os.getpid()}-{os.urandom(4).hex()}"   # TINYTOWND_LIFELINE
        end_recorded(self.state_file, log, marked=key, own=self.marker)
        self._told: set[int] = set()      # groups the watcher was told of
        self._running: set[int] = set()   # groups running now
        self._flush = None
        r, self._w = os.pipe()          # (not inherited by CLIs: O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", lifeline_watcher.__file__, str(self.state_file),
                 str(KILL_GRACE_S), self.marker], stdin=r, stdout=subprocess.DEVNULL,
                close_fds=True, start_new_session=True)
        finally:
            os.close(r)

    def _say(self, line: bytes) -> None:
        if self._w is None:
            return
        try:
            os.write(self._w, line)
        except OSError:
            pass

    def _soon(self) -> None:
        if self._flush is None and self._w is not None:
            self._flush = gevent.spawn_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Tell the watcher which groups started or ended since the last flush (one write)."""
        self._flush = None
        new, gone = self._running - self._told, self._told - self._running
        if new or gone:
            self._say(b"".join([b"+%d\n" % g for g in new] + [b"-%d\n" % g for g in gone]))
            self._told = set(self._running)

    def track(self, pgid: int) -> None:
        self._running.add(pgid)
        self._soon()

    def untrack(self, pgid: int) -> None:
        self._running.discard(pgid)
        if pgid in self._told:
            self._soon()

    def cut(self) -> None:
        """As if the daemon died: the watcher ends what is still listed or carries the marker
        (tests; shutdown)."""
        if self._flush is not None:
            self._flush.kill(block=False)
            self._flush = None
        if self._w is not None:
            os.close(self._w)
            self._w = None

    def close(self, timeout: float = KILL_GRACE_S + 2) -> None:
        self.cut()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
