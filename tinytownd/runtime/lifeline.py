"""A CLI never outlives the daemon that started it, and never runs twice beside itself.

Every agent CLI runs in a process group of its own (a new session led by its shell), so the
daemon can end a whole round — the CLI and whatever it started — with one killpg. When the
daemon ends normally it ends its rounds itself. When it is killed (kill -9, OOM killer) nothing of
it runs any more; for that case a small watcher process (lifeline_watcher.py) holds the other end
of a pipe and the list of running groups: the pipe's EOF is the daemon's death, and the watcher
ends the groups (SIGTERM, then SIGKILL after KILL_GRACE_S).

The watcher keeps the list in `<root>/run/cli-groups.json` too. A daemon starting on the same town
root first ends the groups it finds there (when their start time still matches: a pid can be
reused), so it never runs a task again while the CLI of the crashed round still runs. An agent
CLI that must leave something running after its round can detach it into a session of its own
(`setsid server &`); that is then the agent's business.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import lifeline_watcher
from .process import close_fd

KILL_GRACE_S = 3.0


def end_recorded(state_file: Path, log=None) -> int:
    """End the groups a previous daemon's watcher left listed; returns how many were live."""
    try:
        groups = {int(k): v for k, v in json.loads(state_file.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return 0
    live = {g: t for g, t in groups.items() if _still_ours(g, t)}
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


def _still_ours(pgid: int, started) -> bool:
    """The recorded group still runs: its leader is the process recorded (same start time), or
    the leader is gone but members of its group remain (a CLI's background children; Linux does
    not hand out a pid that is still some group's id, so the group is still the one recorded)."""
    now = lifeline_watcher.start_time(pgid)
    if now is not None:
        return started is None or now == started
    return lifeline_watcher.group_exists(pgid)


class Lifeline:
    def __init__(self, root: Path, log=None):
        self.state_file = Path(root) / "run" / "cli-groups.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        end_recorded(self.state_file, log)
        r, self._w = os.pipe()          # (not inherited by CLIs: O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", lifeline_watcher.__file__, str(self.state_file),
                 str(KILL_GRACE_S)], stdin=r, stdout=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)
        finally:
            os.close(r)

    def _say(self, line: bytes) -> None:
        if self._w is None:
            return
        try:
            os.write(self._w, line)
        except OSError:
            pass

    def track(self, pgid: int) -> None:
        self._say(b"+%d\n" % pgid)

    def untrack(self, pgid: int) -> None:
        self._say(b"-%d\n" % pgid)

    def cut(self) -> None:
        """As if the daemon died: the watcher ends what is still listed (tests; shutdown).
        The close is immediate (process.close_fd): gevent's os.close defers a pipe's close to
        the loop's next check, which a quiet loop blocked in close()'s wait holds back, so the
        watcher saw its EOF only when that wait timed out (5 s per runtime close)."""
        if self._w is not None:
            close_fd(self._w)
            self._w = None

    def close(self, timeout: float = KILL_GRACE_S + 2) -> None:
        self.cut()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
