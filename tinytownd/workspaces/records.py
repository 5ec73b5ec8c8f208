"""Where workspaces are recorded: fields of the task's daemon meta (tt:<town>:tinytownd:task:<tid>,
so tt's task record stays as tt writes it) and the town's set of tasks that may have a worktree
(tt:<town>:tinytownd:workspaces). Keys are documented in store/keys.py.

Meta fields: branch, base (the resolved commit), head (the branch's commit), files_changed,
insertions, deletions, worktree (the worktree's path while it exists); and the daemon's own:
workspace_repo (main worktree), workspace_git (common git dir), workspace_dir (its `dir`),
workspace_keep, workspace_commit, workspace_setup ("done"), workspace_ended (the task's state when
its keep policy was applied).
"""
from __future__ import annotations

from dataclasses import dataclass

SHOWN = ("branch", "base", "head", "files_changed", "insertions", "deletions", "worktree")
ALL = SHOWN + ("workspace_repo", "workspace_git", "workspace_dir", "workspace_keep",
               "workspace_commit", "workspace_setup", "workspace_ended")


@dataclass
class Workspace:
    """One task's workspace."""
    tid: str
    repo: str          # the top level of the main worktree
    common: str        # the repository's common git directory (its lock)
    dir: str           # the `dir` it lives in (nothing outside is deleted)
    path: str
    branch: str
    base: str
    keep: str = "on_failure"
    commit: str = "auto"
    created: bool = False      # made by this prepare (setup runs)

    @classmethod
    def from_meta(cls, tid: str, meta: dict) -> "Workspace | None":
        need = ("branch", "base", "workspace_repo", "workspace_git", "workspace_dir")
        if not all(meta.get(k) for k in need):
            return None
        from .naming import worktree_path
        return cls(tid, meta["workspace_repo"], meta["workspace_git"], meta["workspace_dir"],
                   meta.get("worktree") or worktree_path(meta["workspace_dir"], tid),
                   meta["branch"], meta["base"], meta.get("workspace_keep") or "on_failure",
                   meta.get("workspace_commit") or "auto")

    def exports(self) -> dict:
        """The CLI's environment for this workspace."""
        return {"TINYTOWN_WORKSPACE": self.path, "TINYTOWN_BRANCH": self.branch,
                "TINYTOWN_BASE": self.base}


def q_intent(p, keys, ws: Workspace) -> None:
    """Before the worktree is made: the task has this branch and place (a retry, a restart or
    another agent finds them)."""
    p.hset(keys.task_meta(ws.tid), mapping={
        "branch": ws.branch, "base": ws.base, "head": ws.base, "worktree": ws.path,
        "workspace_repo": ws.repo, "workspace_git": ws.common, "workspace_dir": ws.dir,
        "workspace_keep": ws.keep, "workspace_commit": ws.commit})
    p.hdel(keys.task_meta(ws.tid), "workspace_ended", "workspace_setup", "files_changed",
           "insertions", "deletions")
    p.sadd(keys.workspaces, ws.tid)


def q_forget(p, keys, tid: str) -> None:
    """The worktree could not be made: the branch is not this task's."""
    p.hdel(keys.task_meta(tid), *ALL)
    p.srem(keys.workspaces, tid)


def q_present(p, keys, ws: Workspace) -> None:
    """The worktree exists again (re-made for a retry)."""
    p.hset(keys.task_meta(ws.tid), "worktree", ws.path)
    p.hdel(keys.task_meta(ws.tid), "workspace_ended")
    p.sadd(keys.workspaces, ws.tid)


def q_head(p, keys, tid: str, head: str, stats: tuple[int, int, int]) -> None:
    p.hset(keys.task_meta(tid), mapping={"head": head, "files_changed": stats[0],
                                         "insertions": stats[1], "deletions": stats[2]})


def q_ended(p, keys, tid: str, state: str | None, *, removed: bool, branch_deleted: bool) -> None:
    """The keep policy was applied: the path goes when the directory went, the branch when it
    was deleted (it had no commits)."""
    m = keys.task_meta(tid)
    p.hset(m, "workspace_ended", state or "gone")
    if removed:
        p.hdel(m, "worktree")
        p.srem(keys.workspaces, tid)
    if branch_deleted:
        p.hdel(m, "branch")


def summary_fields(meta: dict) -> dict:
    """The summary's per-task fields (batch --summary, task show): branch, base, head, counts."""
    def num(k):
        try:
            return int(meta[k]) if meta.get(k) not in (None, "") else None
        except ValueError:
            return None
    return {"branch": meta.get("branch"), "base": meta.get("base"), "head": meta.get("head"),
            "files_changed": num("files_changed"), "insertions": num("insertions"),
            "deletions": num("deletions")}
