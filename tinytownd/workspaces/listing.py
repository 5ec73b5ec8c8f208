"""`tinytownd workspaces list|prune`: the recorded workspaces, what state each is in, its disk
use; prune applies the keep policy to those whose task has ended (the daemon's sweep, on demand).

States:
  running   a round runs in it now
  waiting   its task is still in flight: the next round continues in it
  ended     its task has ended and the keep policy has not run yet (prune removes what it allows)
  kept      its task has ended and the keep policy kept the directory (`prune --all` removes it;
            the branch stays when it has commits)
  missing   recorded, but the directory is gone (the next round or prune re-makes or forgets it)
"""
from __future__ import annotations

import os

import gevent

from . import git, spec
from .policy import ENDED

STATES = ("running", "waiting", "ended", "kept", "missing")


def state_of(task_state: str | None, running: bool, meta: dict, present: bool) -> str:
    """One of STATES (pure)."""
    if running:
        return "running"
    if not present:
        return "missing"
    if task_state is not None and task_state not in ENDED:
        return "waiting"
    return "kept" if meta.get("workspace_ended") else "ended"


def disk_use(path: str) -> int:
    """Bytes the directory takes (du: allocated blocks), not following links."""
    total = 0
    for d, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(d, name)).st_blocks * 512
            except OSError:
                pass
    return total


def rows(mgr, *, sizes: bool = True) -> list[dict]:
    """One row per recorded workspace: task, task_state, state, branch, base, head, counts,
    path, repo, bytes."""
    out = []
    for tid, task_state, meta, running in mgr.entries():
        path = meta.get("worktree") or ""
        branch = meta.get("branch") or ""
        present = bool(path) and git.checked_out(path) is not None
        row = {"task": tid, "task_state": task_state or "gone",
               "state": state_of(task_state, running, meta, present), "branch": branch or None,
               "base": meta.get("base"), "head": meta.get("head"),
               "files_changed": _int(meta.get("files_changed")),
               "insertions": _int(meta.get("insertions")),
               "deletions": _int(meta.get("deletions")),
               "path": path or None, "repo": meta.get("workspace_repo"), "bytes": None}
        if sizes and present:
            row["bytes"] = gevent.get_hub().threadpool.apply(disk_use, (path,))
        out.append(row)
    return out


def repos_of(cfg) -> set[str]:
    """The repositories the config's worktree-mode agents use."""
    return {ws.repo for ws in settings_of(cfg)}


def dirs_of(cfg) -> set[str]:
    """The workspace dirs of the config's worktree-mode agents."""
    return {ws.dir for ws in settings_of(cfg)}


def settings_of(cfg) -> list:
    clis, out = cfg.clis(), []
    for a in cfg.agents:
        cli = clis.get(a.cli)
        if cli is None or not (cli.workspace or a.workspace):
            continue
        workdir = str(cfg.resolve(a.workdir or cli.workdir) or cfg.root)
        ws = spec.resolve(cfg, cli.workspace, a.workspace, workdir)
        if ws is not None:
            out.append(ws)
    return out


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def _int(v):
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None
