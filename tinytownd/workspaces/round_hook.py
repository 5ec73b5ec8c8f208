"""One round of a worktree-mode task and its workspace: prepared before the CLI runs, finalized
after (the round calls these three, nothing else of workspaces).

  prepare        the task's worktree (made, or found again); a Trouble when the round cannot run
  after_exit0    exit 0: commit (commit: auto), record head and counts, apply the keep policy; a
                 failure there turns the result into a failed round (the worktree keeps the work)
  after_outcome  the round did not complete the task: the keep policy when the task has ended,
                 else the worktree waits for the next round
"""
from __future__ import annotations

from dataclasses import dataclass

from .policy import WorkspaceError


@dataclass
class Trouble:
    """Why the round cannot run: `defer` (the daemon's fault: no attempt used), else a failed
    round with `message` and `output` (`final`: another attempt would meet the same)."""
    message: str
    defer: bool
    final: bool = False
    output: str = ""


class RoundWorkspace:
    def __init__(self, mgr, settings, tid: str, task: dict | None, log):
        self.mgr = mgr
        self.settings = settings
        self.tid = tid
        self.task = task or {}
        self.log = log
        self.ws = None          # records.Workspace once prepared

    @property
    def cwd(self) -> str:
        return self.ws.path

    def exports(self) -> dict:
        return self.ws.exports()

    def prepare(self, meta: dict, env: dict, logs_dir: str) -> Trouble | None:
        try:
            self.ws = self.mgr.prepare(self.settings, self.tid, self.task, meta, env=env,
                                       logs_dir=logs_dir)
            return None
        except WorkspaceError as e:
            if e.kind == "daemon":
                return Trouble(f"workspace: {e}", defer=True)
            self.ws = e.workspace
            return Trouble(str(e), defer=False, final=e.kind == "task", output=e.output)
        except OSError as e:
            return Trouble(f"workspace: {e}", defer=True)

    def after_exit0(self, result, failed):
        """`result` as it was, or `failed(error)` (the runner's failed result) when the commit
        or record did not work."""
        try:
            self.mgr.complete(self.ws, agent=self.settings.name,
                              description=self.task.get("description", ""))
            return result
        except (WorkspaceError, OSError) as e:
            self.log.warning("workspace commit failed", error=str(e))
            return failed(f"workspace: {e}")

    def after_outcome(self, kind: str, task_state: str | None) -> None:
        """`kind`: the round's outcome (outcome.py) other than ok; `task_state`: the task's."""
        if self.ws is None:
            return
        mgr, ws = self.mgr, self.ws
        try:
            if kind == "cli_finished" and task_state == "completed":
                mgr.complete(ws, agent=self.settings.name,
                             description=self.task.get("description", ""))
            elif kind in ("failed", "cli_finished"):
                mgr.ended(ws, task_state if kind == "cli_finished" else "failed")
            else:
                mgr.release(ws)
        except (WorkspaceError, OSError) as e:   # the sweep tries again
            mgr.release(ws)
            self.log.warning("workspace end failed", error=str(e))
