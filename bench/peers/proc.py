"""CPU accounting from /proc for the end-to-end benchmark: a process tree's CPU between two
instants, split into the root's main thread, its other threads, the other processes of the
tree, the children they reaped (the jobs' `sh`), and redis-server.

    before = Snapshot.take(root_pids, redis_pids)
    ...                                   # the clocked window
    after = Snapshot.take(root_pids, redis_pids)
    split = after.minus(before, tasks=n)  # ms per task

All figures are utime+stime in clock ticks (100 Hz here) from /proc/PID/stat and
/proc/PID/task/TID/stat; `children` is cutime+cstime, the CPU of children a process has waited
for (a job's `sh` is counted when its worker reaps it). Processes named `sh` are left out of the
tree (still running jobs; their CPU reaches `children` when reaped).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CLK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    lp, rp = raw.index("("), raw.rindex(")")
    return [raw[:lp].strip(), raw[lp + 1:rp]] + raw[rp + 2:].split()


def proc_cpu(pid: int) -> tuple[str, int, int, int] | None:
    """(comm, ppid, own ticks, reaped children's ticks) of a process, or None if it is gone."""
    s = _stat(f"/proc/{pid}/stat")
    if s is None:
        return None
    # fields (1-based in proc(5)): 4 ppid, 14 utime, 15 stime, 16 cutime, 17 cstime
    return s[1], int(s[3]), int(s[13]) + int(s[14]), int(s[15]) + int(s[16])


def thread_cpu(pid: int, tid: int) -> int:
    s = _stat(f"/proc/{pid}/task/{tid}/stat")
    return 0 if s is None else int(s[13]) + int(s[14])


def descendants(roots: list[int]) -> set[int]:
    """The roots and every process below them (one scan of /proc)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(f"/proc/{name}/stat")
            if s is not None:
                parent[int(name)] = int(s[3])
    kids: dict[int, list[int]] = {}
    for p, pp in parent.items():
        kids.setdefault(pp, []).append(p)
    out, todo = set(), [r for r in roots if r in parent]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(kids.get(p, ()))
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class Snapshot:
    roots: list[int]
    redis: set[int]
    own: dict[int, int] = field(default_factory=dict)        # pid -> own ticks
    reaped: dict[int, int] = field(default_factory=dict)     # pid -> children's ticks
    comm: dict[int, str] = field(default_factory=dict)
    main_thread: int = 0          # the (first) root's main thread
    load: list[float] = field(default_factory=list)

    @classmethod
    def take(cls, roots: list[int], redis_pids: list[int] | None = None) -> "Snapshot":
        snap = cls(list(roots), set(redis_pids or ()))
        for pid in descendants(list(roots)) | snap.redis:
            c = proc_cpu(pid)
            if c is None or (c[0] == "sh" and pid not in roots):
                continue
            snap.comm[pid], _ppid, snap.own[pid], snap.reaped[pid] = c
        if roots:
            snap.main_thread = thread_cpu(roots[0], roots[0])
        snap.load = loadavg()
        return snap

    def minus(self, before: "Snapshot", tasks: int) -> dict:
        """ms of CPU per task in the window before→self, by part."""
        def d(cur: dict, old: dict, pids) -> int:
            return sum(cur.get(p, 0) - old.get(p, 0) for p in pids if p in cur)

        redis = [p for p in self.own if p in self.redis or self.comm.get(p) == "redis-server"]
        tree = [p for p in self.own if p not in redis]
        root = self.roots[0] if self.roots else None
        per = 1000.0 / CLK / max(1, tasks)
        main = (self.main_thread - before.main_thread) if root in self.own else 0
        root_own = d(self.own, before.own, [root]) if root in self.own else 0
        return {
            "main_thread_ms": round(main * per, 3),
            "other_threads_ms": round((root_own - main) * per, 3),
            "other_procs_ms": round(d(self.own, before.own, [p for p in tree if p != root]) * per, 3),
            "workers_ms": round(d(self.own, before.own, tree) * per, 3),
            "children_ms": round(d(self.reaped, before.reaped, tree) * per, 3),
            "redis_ms": round(d(self.own, before.own, redis) * per, 3),
            "procs": len(tree),
            "load_start": before.load, "load_end": self.load,
        }
