"""The round logs of one agent on disk: `<logs>/<agent>_round_<n>.log`, bounded in number and bytes.

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


def log_name(agent: str, rnd: int) -> str:
    """The file name of round `rnd` of `agent` (the daemon task meta's `log:<attempt>`)."""
    return f"{agent}_round_{rnd}.log"


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

    def path(self, rnd: int) -> str:
        return os.path.join(self.dir, log_name(self.agent, rnd))

    def _scan(self) -> None:
        pat = re.compile(re.escape(self.agent) + r"_round_(\d+)\.log$")
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
