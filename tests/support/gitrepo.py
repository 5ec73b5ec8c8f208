"""Real git repositories for the workspace tests and benchmarks: made in a temp dir, inspected
with plain git (no tinytownd code), removed with the dir."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

IDENT = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
         "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def git(repo: Path | str, *args: str, check: bool = True, input: str | None = None) -> str:
    env = {**os.environ, **IDENT, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         env=env, input=input, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res.stdout


def make_repo(path: Path, files: dict[str, str] | None = None, *, n_files: int = 0) -> Path:
    """A repository at `path` on branch main with one commit of `files` (plus `n_files`
    generated ones under src/)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "# demo\n", "notes.txt": "line 0\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for i in range(n_files):
        d = path / "src" / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.txt").write_text(f"file {i}\n" * 4)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def branches(repo: Path, pattern: str = "tt/*") -> list[str]:
    return [b for b in git(repo, "branch", "--list", "--format=%(refname:short)",
                           pattern).split("\n") if b]


def worktrees(repo: Path) -> list[str]:
    """Paths of the repository's worktrees other than the main one."""
    out = [line[9:] for line in git(repo, "worktree", "list", "--porcelain").split("\n")
           if line.startswith("worktree ")]
    return out[1:]


def status(repo: Path) -> str:
    return git(repo, "status", "--porcelain", "--untracked-files=all")


# An agent CLI that appends a line naming its task to one shared file (every agent edits the
# same file) and creates a file of its own.
APPEND_CLI = ('echo "task $TINYTOWN_TASK_ID by $TINYTOWN_AGENT_NAME" >> notes.txt && '
              'echo "$TINYTOWN_BRANCH" > "own-$TINYTOWN_TASK_ID.txt"')
