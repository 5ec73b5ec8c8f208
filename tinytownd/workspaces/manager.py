"""WorkspaceManager: a task's worktree and branch through its life.

  prepare   before a round of a worktree-mode task: the task's worktree, made once per task
            (branch from `base` resolved then, named by the pattern; a branch that exists
            before its task is a clash and fails that task) or found again — a retry, a
            restart after kill -9 and another agent all continue where the last round left it;
            `setup` runs once in a new worktree
  complete  after an exit-0 round: commit what the agent left (commit: auto), record head and
            counts, apply the keep policy
  ended     the task ended otherwise (failed): record head and counts, apply the keep policy
  sweep     at start-up and every SWEEP_S: `git worktree prune` of the repositories, and the keep
            policy for tasks that ended without a round of ours noticing (a crash, an operator)

Every git operation on a repository holds its lock (lock.py) and runs off the event loop
(proc.py); failures are WorkspaceErrors whose kind says who is at fault (policy.py). Nothing
outside the task's `dir` is ever deleted.
"""
from __future__ import annotations

import os
import shutil

import gevent
import redis

from . import git, naming, policy, proc, records
from .lock import repo_lock
from .policy import ENDED, WorkspaceError
from .records import Workspace

SWEEP_S = 30.0
SETUP_TIMEOUT_S = 3600.0
READ_CHUNK = 500


class WorkspaceManager:
    def __init__(self, r: redis.Redis, keys, *, log, lifeline=None, dirs=None):
        """`dirs()`: the configured workspace dirs — a directory that is not a worktree is removed
        only below one of them (records in Redis are anyone's to write)."""
        self.r = r
        self.dirs = dirs
        self.keys = keys
        self.log = log
        self.lifeline = lifeline
        self.active: set[str] = set()        # tasks a round of this process runs in now
        self._dirs: dict[str, tuple[str, str]] = {}   # repo → (top level, common git dir)

    # ------------------------------------------------------------------ prepare
    def repo_dirs(self, repo: str) -> tuple[str, str]:
        got = self._dirs.get(repo)
        if got is None:
            try:
                got = self._dirs[repo] = git.repo_dirs(repo)
            except WorkspaceError as e:
                if not os.path.isdir(repo):
                    raise WorkspaceError(f"workspace.repo {repo} does not exist", "daemon") \
                        from None
                raise e
        return got

    def prepare(self, s, tid: str, task: dict | None, meta: dict, *, env: dict,
                logs_dir: str) -> Workspace:
        """The worktree of task `tid` for agent settings `s` (s.workspace set), ready for a
        round. Raises WorkspaceError."""
        cfg = s.workspace
        ws = Workspace.from_meta(tid, meta)
        if ws is None:
            top, common = self.repo_dirs(cfg.repo)
            ws = Workspace(tid, top, common, cfg.dir, naming.worktree_path(cfg.dir, tid), "", "",
                           cfg.keep, cfg.commit)
        if ws.branch and git.checked_out(ws.path) == ws.branch:
            pass                        # a retry on its worktree: nothing to do (no git run)
        elif ws.branch:
            with repo_lock(ws.common):
                self._reattach(ws)
        else:
            base = git.resolve(ws.repo, cfg.base)       # (reads only: outside the lock)
            with repo_lock(ws.common):
                self._create(ws, cfg, s, task, meta, base)
        self.active.add(tid)
        try:
            if cfg.setup and (ws.created or meta.get("workspace_setup") != "done"):
                self._setup(ws, cfg.setup, s, env, logs_dir)
        except WorkspaceError as e:
            e.workspace = ws          # the round's end applies the keep policy if it was the last
            self.active.discard(tid)
            raise
        except BaseException:
            self.active.discard(tid)
            raise
        return ws

    def _create(self, ws: Workspace, cfg, s, task: dict | None, meta: dict,
                base: str | None) -> None:
        if base is None:
            raise WorkspaceError(f"workspace.base {cfg.base!r} names no commit in {ws.repo}",
                                 "task")
        desc = (task or {}).get("description", "")
        vals = naming.values(town=self.keys.town, task_id=ws.tid, description=desc, agent=s.name,
                             batch=meta.get("batch"), item=_item(task, meta))
        branch = naming.render(cfg.branch, vals)
        why = naming.ref_problem(branch)
        if why:
            raise WorkspaceError(f"workspace.branch gives {branch!r}, which {why}", "task")
        if git.branch_sha(ws.repo, branch):
            raise WorkspaceError(f"branch {branch!r} already exists in {ws.repo} before its task "
                                 "(a name clash); it is not overwritten: rename or delete it, "
                                 "or change workspace.branch", "task")
        ws.branch, ws.base = branch, base
        p = self.r.pipeline(transaction=True)
        records.q_intent(p, self.keys, ws)
        p.execute()
        try:
            self._clear(ws)
            git.worktree_add(ws.repo, ws.path, branch, base)
        except WorkspaceError:
            p = self.r.pipeline(transaction=True)
            records.q_forget(p, self.keys, ws.tid)
            p.execute()
            raise
        ws.created = True
        self.log.info("workspace created", task=ws.tid, branch=branch, path=ws.path)

    def _reattach(self, ws: Workspace) -> None:
        """The task had a workspace: the same worktree when it is there, else a new one on the
        task's branch (or, if the branch went, from the task's base)."""
        if git.checked_out(ws.path) == ws.branch:
            return
        self._clear(ws)
        git.worktree_prune(ws.repo)
        if git.branch_sha(ws.repo, ws.branch):
            git.worktree_add(ws.repo, ws.path, ws.branch, None)
        else:
            git.worktree_add(ws.repo, ws.path, ws.branch, ws.base)
        p = self.r.pipeline(transaction=True)
        records.q_present(p, self.keys, ws)
        p.execute()
        ws.created = True
        self.log.info("workspace re-made for the task's branch", task=ws.tid, branch=ws.branch)

    def _clear(self, ws: Workspace) -> None:
        """Whatever is at the worktree's path goes (a stale or half-made worktree), but only
        inside `dir`."""
        if not os.path.lexists(ws.path):
            return
        why = self.not_removable(ws)
        if why:
            raise WorkspaceError(f"{ws.path}: {why}: not touched", "daemon")
        if os.path.lexists(os.path.join(ws.path, ".git")):
            try:
                git.worktree_remove(ws.repo, ws.path)
            except WorkspaceError:
                pass
        if os.path.lexists(ws.path):
            _rmtree(ws.path)

    def not_removable(self, ws: Workspace) -> str | None:
        """Why the directory at ws.path may not be deleted, or None: only a task's own
        directory (dir/<task id>) strictly inside `dir`, and `dir` one the config names."""
        if os.path.realpath(ws.path) != os.path.realpath(naming.worktree_path(ws.dir, ws.tid)):
            return "not the task's own directory in its workspace.dir"
        if not naming.inside(ws.path, ws.dir):
            return f"outside workspace.dir {ws.dir}"
        dirs = self.dirs() if self.dirs is not None else ()
        if os.path.realpath(ws.dir) not in {os.path.realpath(d) for d in dirs}:
            return f"{ws.dir} is not a workspace.dir of this config"
        return None

    def _setup(self, ws: Workspace, command: str, s, env: dict, logs_dir: str) -> None:
        log_path = os.path.join(logs_dir, f"{s.name}_setup.log")
        os.makedirs(logs_dir, exist_ok=True)
        res = proc.run(["sh", "-c", 'cd -- "$1" && shift && exec sh -c "$0"', command, ws.path],
                       env={**env, **ws.exports()}, timeout_s=s.timeout_s or SETUP_TIMEOUT_S,
                       out_path=log_path, lifeline=self.lifeline)
        if not res.ok:
            tail = _tail(log_path)
            why = (f"timed out after {res.duration_s:.0f}s" if res.timed_out else
                   f"exit status {res.code}" if res.code is not None else res.error)
            raise WorkspaceError(f"workspace setup failed ({why})", "round", output=tail)
        self.r.hset(self.keys.task_meta(ws.tid), "workspace_setup", "done")

    # ------------------------------------------------------------------ the end of a round
    def complete(self, ws: Workspace, *, agent: str, description: str) -> None:
        """After an exit-0 round: commit (commit: auto), record, apply the keep policy."""
        try:
            # the commit touches only the worktree's own index and branch (git locks its ref):
            # no need for the repository's lock
            if ws.commit == "auto":
                git.commit_all(ws.path, naming.commit_message(description, ws.tid, agent),
                               naming.author(agent, self.keys.town))
            self._end(ws, "completed")
        finally:
            self.active.discard(ws.tid)

    def ended(self, ws: Workspace, state: str) -> None:
        """The task ended another way (failed, cancelled): record and apply the keep policy."""
        try:
            self._end(ws, state)
        finally:
            self.active.discard(ws.tid)

    def release(self, ws: Workspace | None) -> None:
        """The round is over and the task goes on (a retry, a deferral): the worktree stays."""
        if ws is not None:
            self.active.discard(ws.tid)

    def _end(self, ws: Workspace, state: str | None) -> None:
        """Record head and counts (reads: outside the lock), then remove what the keep policy
        says (under the repository's lock)."""
        present = git.checked_out(ws.path) == ws.branch
        head = git.head(ws.path) if present else (git.branch_sha(ws.repo, ws.branch) or ws.base)
        stats = git.shortstat(ws.repo, ws.base, head)
        remove, delete = policy.end_actions(ws.keep, state, head != ws.base)
        if remove or delete:
            with repo_lock(ws.common):
                removed, deleted = self._remove(ws, present, remove, delete)
        else:
            removed = deleted = False
        p = self.r.pipeline(transaction=True)
        records.q_head(p, self.keys, ws.tid, head, stats)
        records.q_ended(p, self.keys, ws.tid, state, removed=removed, branch_deleted=deleted)
        p.execute()
        self.log.info("workspace ended", task=ws.tid, state=state, branch=ws.branch,
                      head=head[:12], files_changed=stats[0], removed=removed,
                      branch_deleted=deleted)

    def _remove(self, ws: Workspace, present: bool, remove: bool,
                delete: bool) -> tuple[bool, bool]:
        """The worktree directory and (without commits) the branch, as the policy said; whether
        each went. The caller holds the repository's lock."""
        removed = deleted = False
        if remove and os.path.lexists(ws.path):
            why = self.not_removable(ws)
            if why:
                self.log.warning("workspace not removed", path=ws.path, reason=why)
            else:
                if present:
                    git.worktree_remove(ws.repo, ws.path)
                if os.path.lexists(ws.path):
                    _rmtree(ws.path)
                removed = True
        elif remove:
            removed = True
        if remove and not present:
            git.worktree_prune(ws.repo)
        if delete and removed:       # (a branch a worktree still has checked out stays)
            deleted = git.delete_branch(ws.repo, ws.branch, ws.base)
        return removed, deleted

    # ------------------------------------------------------------------ sweep
    def sweep(self, repos=(), *, kept: bool = False) -> list[str]:
        """`git worktree prune` of `repos`, then the keep policy for every recorded workspace whose task has ended (with `kept`, a
        worktree the policy keeps goes too; its branch stays if it has commits). Returns the
        ids of the tasks whose workspace was ended now."""
        entries = self.entries()
        for repo in sorted(repos):
            try:
                top, common = self.repo_dirs(repo)
                with repo_lock(common):
                    git.worktree_prune(top)
            except WorkspaceError as e:
                self.log.warning("workspace prune failed", repo=repo, error=str(e))
        done = []
        for tid, state, meta, running in entries:
            if tid in self.active or running:
                continue
            ws = Workspace.from_meta(tid, meta)
            if ws is None:
                p = self.r.pipeline(transaction=False)
                p.srem(self.keys.workspaces, tid)
                p.execute()
                continue
            if state is not None and state not in ENDED:
                continue                 # in flight: its next round finds the worktree
            if meta.get("workspace_ended") and not (kept and meta.get("worktree")):
                continue
            if kept:
                ws.keep = "never"
            try:
                self._end(ws, state)
                done.append(tid)
            except WorkspaceError as e:
                self.log.warning("workspace cleanup failed", task=tid, error=str(e))
        return done

    def entries(self) -> list[tuple[str, str | None, dict, bool]]:
        """(task id, task state or None, meta, a round runs it now) of every recorded workspace."""
        tids = sorted(self.r.smembers(self.keys.workspaces))
        out = []
        for i in range(0, len(tids), READ_CHUNK):
            chunk = tids[i:i + READ_CHUNK]
            p = self.r.pipeline(transaction=False)
            for tid in chunk:
                p.hmget(self.keys.task(tid), "state", "assigned_to")
                p.hgetall(self.keys.task_meta(tid))
            res = p.execute()
            p = self.r.pipeline(transaction=False)
            for j in range(len(chunk)):
                aid = res[2 * j][1]
                p.hget(self.keys.agent(aid), "current_task") if aid else p.echo("")
            current = p.execute()
            for j, tid in enumerate(chunk):
                state = res[2 * j][0]
                out.append((tid, state, res[2 * j + 1] or {}, current[j] == tid))
        return out

    def run_sweeps(self, repos, stopping, ready=lambda: True) -> None:
        """The runtime's `workspaces` service: a sweep at start (with `git worktree prune` of
        `repos()`), then every SWEEP_S. The first waits for `ready()` (the agents' settings
        loaded): before that no workspace.dir is known and every removal would be refused."""
        while not ready() and not stopping.is_set():
            stopping.wait(0.05)
        first = True
        while not stopping.is_set():
            try:
                n = self.sweep(repos() if first else ())
                first = False
                if n:
                    self.log.info("workspaces of ended tasks cleaned up", tasks=len(n))
            except redis.RedisError as e:
                self.log.warning("workspace sweep failed", error=str(e))
            stopping.wait(SWEEP_S)


def _item(task: dict | None, meta: dict) -> str | None:
    """The batch file's task id, or the mission work item the task belongs to."""
    if meta.get("batch_task"):
        return meta["batch_task"]
    from tinytownd.store import records as store_records
    for t in store_records.decode_tags((task or {}).get("tags")):
        if t.startswith("work-item:"):
            return t[len("work-item:"):]
    return None


def _rmtree(path: str) -> None:
    """rmtree in the hub's thread pool (a worktree can hold thousands of files)."""
    gevent.get_hub().threadpool.apply(shutil.rmtree, (path,), {"ignore_errors": True})


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
