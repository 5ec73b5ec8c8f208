"""The git operations of workspaces, each one command (proc.run) with a timeout; a failure is a
WorkspaceError (policy.classify). tinytownd's own commands run without hooks, automatic gc,
signing or prompts; the agent's own git commands are the agent's business.
"""
from __future__ import annotations

import os
import re

from . import proc
from .policy import WorkspaceError, classify

GIT_TIMEOUT_S = 120.0
CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false",
          "-c", "commit.gpgSign=false", "-c", "core.quotePath=false")
_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX")
_env_cache: tuple | None = None
_STAT = re.compile(r"(\d+) files? changed(?:, (\d+) insertions?\(\+\))?(?:, (\d+) deletions?\(-\))?")


def base_env() -> dict:
    """The environment of tinytownd's git commands: no prompts, no pager, C messages."""
    global _env_cache
    src = os.environ._data    # type: ignore[attr-defined]
    if _env_cache is None or _env_cache[0] != src:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env.update(GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", PAGER="cat", LC_ALL="C",
                   GIT_ASKPASS="true", GIT_EDITOR="true")
        _env_cache = (dict(src), env)
    return _env_cache[1]


def git(where: str, *args: str, what: str | None = None, env: dict | None = None,
        ok=(0,), timeout_s: float = GIT_TIMEOUT_S, kind: str = "daemon") -> proc.Result:
    """`git -C where ARGS`; raises WorkspaceError unless it exits with a code in `ok`. `kind`:
    who is at fault for a failure that is none of the daemon's known troubles."""
    e = base_env() if env is None else {**base_env(), **env}
    res = proc.run(["git", "-C", where, *CONFIG, *args], env=e, timeout_s=timeout_s)
    if res.code in ok and not res.timed_out:
        return res
    raise classify(what or args[0], where, res.code, res.err_text, res.timed_out, timeout_s,
                   default=kind)


def repo_dirs(repo: str) -> tuple[str, str]:
    """(the top level of `repo`'s main worktree, its common git directory)."""
    out = git(repo, "rev-parse", "--path-format=absolute", "--show-toplevel",
              "--git-common-dir", what="rev-parse").text.split("\n")
    return out[0].strip(), out[1].strip()


def resolve(repo: str, ref: str) -> str | None:
    """The commit `ref` names, or None."""
    res = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
              what="rev-parse", ok=(0, 1, 128))
    sha = res.text.strip()
    return sha if res.code == 0 and sha else None


def branch_sha(repo: str, branch: str) -> str | None:
    res = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", what="rev-parse",
              ok=(0, 1, 128))
    return res.text.strip() if res.code == 0 and res.text.strip() else None


def worktree_add(repo: str, path: str, branch: str, base: str | None) -> None:
    """A worktree at `path` on `branch`: a new branch from `base`, or (base None) an existing one."""
    args = ["worktree", "add", "-q"]
    args += ["-b", branch, path, base] if base else [path, branch]
    git(repo, *args, what="worktree add", kind="task")


def worktree_remove(repo: str, path: str) -> None:
    git(repo, "worktree", "remove", "--force", "--force", path, what="worktree remove")


def worktree_prune(repo: str) -> None:
    git(repo, "worktree", "prune", what="worktree prune")


def worktree_list(repo: str) -> list[dict]:
    """`git worktree list --porcelain`: [{path, head, branch}] (the main worktree first)."""
    out, cur = [], {}
    for line in git(repo, "worktree", "list", "--porcelain", what="worktree list").text.split("\n"):
        if not line.strip():
            if cur:
                out.append(cur)
            cur = {}
            continue
        key, _, val = line.partition(" ")
        if key == "worktree":
            cur = {"path": val}
        elif key == "HEAD":
            cur["head"] = val
        elif key == "branch":
            cur["branch"] = val.removeprefix("refs/heads/")
    if cur:
        out.append(cur)
    return out


def checked_out(path: str) -> str | None:
    """The branch the worktree at `path` has checked out, read from its files (no git run);
    None when `path` is not a live worktree."""
    try:
        with open(os.path.join(path, ".git")) as f:
            link = f.read().strip()
        if not link.startswith("gitdir: "):
            return None
        gitdir = link[8:]
        if not os.path.isabs(gitdir):
            gitdir = os.path.join(path, gitdir)
        with open(os.path.join(gitdir, "HEAD")) as f:
            head = f.read().strip()
    except OSError:
        return None
    return head[16:] if head.startswith("ref: refs/heads/") else None


def dirty(path: str) -> bool:
    res = git(path, "status", "--porcelain", "-z", "--untracked-files=all", what="status")
    return bool(res.out.strip(b"\0\n "))


def commit_all(path: str, message: str, env: dict) -> bool:
    """Stage everything and commit it; False (no commit) when nothing changed."""
    git(path, "add", "-A", what="add")
    if git(path, "diff", "--cached", "--quiet", what="diff", ok=(0, 1)).code == 0:
        return False
    git(path, "commit", "-q", "--no-verify", "-m", message, what="commit", env=env)
    return True


def head(path: str) -> str:
    return git(path, "rev-parse", "--verify", "HEAD", what="rev-parse").text.strip()


def shortstat(repo: str, base: str, head_: str) -> tuple[int, int, int]:
    """(files changed, insertions, deletions) from `base` to `head_`."""
    if base == head_:
        return 0, 0, 0
    text = git(repo, "diff", "--shortstat", base, head_, what="diff").text
    m = _STAT.search(text)
    if not m:
        return 0, 0, 0
    return tuple(int(x or 0) for x in m.groups())   # type: ignore[return-value]


def delete_branch(repo: str, branch: str, expect: str) -> bool:
    """Delete `branch` only if it still points at `expect` (atomic); whether it was deleted."""
    res = git(repo, "update-ref", "-d", f"refs/heads/{branch}", expect, what="update-ref",
              ok=(0, 1, 128))
    return res.code == 0


def format_patch(repo: str, base: str, head_: str) -> bytes:
    """The commits base..head as an mbox `git am` applies."""
    return git(repo, "format-patch", "--stdout", "--binary", f"{base}..{head_}",
               what="format-patch").out


def not_a_repo_problem(repo: str) -> str | None:
    """Why `repo` cannot hold workspaces (not a git repository, git refuses it, its git directory
    is not writable), or None. For the config checks."""
    if not os.path.isdir(repo):
        return f"{repo} is not a directory"
    try:
        _top, common = repo_dirs(repo)
    except WorkspaceError as e:
        return str(e)
    if not os.access(common, os.W_OK):
        from .policy import RW_HINT
        return (f"git cannot write to {common} (the repository's git directory is read-only "
                f"for the daemon); " + RW_HINT.format(repo=repo))
    return None
