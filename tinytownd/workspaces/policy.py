"""What happens to a task's workspace, pure: when it ends (`keep`), and what a git failure means.

  end_actions   keep: never | on_failure | always, the task's final state and whether its branch
                has commits → (remove the worktree directory, delete the branch)
  classify      a failed git command → a WorkspaceError whose `kind` says who is at fault:
                  task    this task cannot get a workspace (a branch name clash, a bad base): it
                          fails now, retries would not help
                  round   like a failed CLI round (the setup command failed): retried
                  daemon  the daemon's environment (git missing, a timeout, a read-only or
                          unwritable repository, a full disk): the round is deferred, no attempt
                          is used, and status says why
"""
from __future__ import annotations

KEEP = ("never", "on_failure", "always")
ENDED = ("completed", "failed", "cancelled")
RW_HINT = ("under systemd (ProtectSystem=strict) add `ReadWritePaths={repo}` in a drop-in "
           "(README, \"Agent workspaces\")")


class WorkspaceError(Exception):
    """A workspace operation failed; `kind` is task | round | daemon (see the module doc)."""

    def __init__(self, message: str, kind: str = "daemon", output: str = ""):
        super().__init__(message)
        self.kind = kind
        self.output = output
        self.workspace = None     # the workspace it happened to, when there is one


def end_actions(keep: str, state: str | None, has_commits: bool) -> tuple[bool, bool]:
    """(remove the directory, delete the branch) for a task that ended in `state` (None: the task
    is gone). The branch stays when it has commits; without any it is deleted with its worktree
    (git cannot delete a branch that a worktree has checked out)."""
    if keep == "always":
        remove = False
    elif keep == "on_failure":
        remove = state == "completed"
    else:
        remove = True
    return remove, remove and not has_commits


def classify(what: str, repo: str, code: int | None, stderr: str, timed_out: bool = False,
             timeout_s: float = 0.0, default: str = "daemon") -> WorkspaceError:
    """The error of git command `what` on `repo` that exited `code` with `stderr`; `default` is
    the kind of a failure that is none of the daemon's known troubles."""
    err = " ".join((stderr or "").strip().split())[-600:]
    if timed_out:
        return WorkspaceError(f"git {what} in {repo} timed out after {timeout_s:g}s", "daemon")
    if code is None:
        return WorkspaceError(f"cannot run git for {what}: {err or 'not found'}", "daemon")
    low = err.lower()
    if "read-only file system" in low:
        return WorkspaceError(f"git {what}: {repo} is read-only for the daemon ({err}); "
                              + RW_HINT.format(repo=repo), "daemon")
    if "permission denied" in low or "unable to create" in low and "lock" not in low:
        return WorkspaceError(f"git {what}: the daemon cannot write to {repo} ({err}); make it "
                              "writable for the daemon's user; " + RW_HINT.format(repo=repo),
                              "daemon")
    if "dubious ownership" in low or "safe.directory" in low:
        return WorkspaceError(f"git {what}: git refuses {repo}: it is owned by another user "
                              f"({err}); add it to safe.directory in the daemon user's "
                              "~/.gitconfig", "daemon")
    if "no space left" in low or "disk quota" in low:
        return WorkspaceError(f"git {what}: disk full ({err})", "daemon")
    if "not a git repository" in low:
        return WorkspaceError(f"git {what}: {repo} is not a git repository ({err})", "daemon")
    return WorkspaceError(f"git {what} failed in {repo} (exit {code}): {err}", default)
