"""The round logs of one agent on disk: `<logs>/<agent>_round_<n>[_<task id>].log`, bounded in
number and bytes. A task's round carries the task id in its name, so `tinytownd logs TASK` finds
every attempt's log without a Redis write per round.

Each log is capped by itself (capture.py: head and tail of the output, the middle dropped and
counted); here the agent's logs together are kept to the newest `kept` and at most `max_bytes`,
the oldest deleted first. Logs left by an earlier run of the daemon count too.
"""
from __future__ import annotations

import collections
import os
import re

ROUND_LOGS_KEPT = 50                # per agent (runtime.round_logs_kept)
ROUND_LOGS_MAX_BYTES = 64 << 20     # per agent, all its logs together (runtime.round_logs_max_bytes)


def log_name(agent: str, rnd: int, task: str | None = None) -> str:
    """The file name of round `rnd` of `agent` (of `task`, when the round has one)."""
    return f"{agent}_round_{rnd}_{task}.log" if task else f"{agent}_round_{rnd}.log"


def log_pattern(agent: str) -> re.Pattern:
    """Matches the agent's log names: group 1 the round, group 2 the task id (or None)."""
    return re.compile(re.escape(agent) + r"_round_(\d+)(?:_([0-9A-Za-z-]{1,64}))?\.log$")


def task_of(name: str) -> str | None:
    """The task id in a round log's name, or None."""
    m = re.search(r"_round_\d+_([0-9A-Za-z-]{1,64})\.log$", name)
    return m.group(1) if m else None


class RoundLogs:
    def __init__(self, logs_dir: str, agent: str, *, kept: int = ROUND_LOGS_KEPT,
                 max_bytes: int = ROUND_LOGS_MAX_BYTES):
        self.dir = logs_dir
        self.agent = agent
        self.kept = kept
        self.max_bytes = max_bytes
        self.logs: collections.deque[tuple[str, int]] = collections.deque()
        self.total = 0
        self._scan()

    def path(self, rnd: int, task: str | None = None) -> str:
        return os.path.join(self.dir, log_name(self.agent, rnd, task))

    def _scan(self) -> None:
        pat = log_pattern(self.agent)
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        found = []
        for name in names:
            m = pat.match(name)
            if m:
                path = os.path.join(self.dir, name)
                try:
                    found.append((int(m.group(1)), path, os.stat(path).st_size))
                except OSError:
                    pass
        for _n, path, size in sorted(found):
            self.logs.append((path, size))
            self.total += size
        self._trim()

    def add(self, path: str, size: int) -> None:
        """A round wrote `size` bytes into its log at `path` (0: no log file)."""
        if size:
            self.logs.append((path, size))
            self.total += size
            self._trim()

    def _trim(self) -> None:
        while self.logs and (len(self.logs) > self.kept or self.total > self.max_bytes):
            path, size = self.logs.popleft()
            self.total -= size
            try:
                os.unlink(path)
            except OSError:
                pass
