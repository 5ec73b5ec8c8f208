"""`tinytownd batch --patches DIR`: one `<task id>.patch` per task whose branch has commits —
`git format-patch` from the task's base to its head, so a reviewer can read it or `git am` it
onto the base without the repository's branches."""
from __future__ import annotations

import os
import re

from . import git
from .policy import WorkspaceError

_FILE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(task_id: str) -> str:
    """`<task id>.patch`, the id made safe for a file name (a file id may hold '/' or ':')."""
    return (_FILE.sub("_", task_id).strip("._") or "task") + ".patch"


def export(rows: list[dict], metas: dict[str, dict], out_dir: str) -> tuple[list[str], list[str]]:
    """Write the patches of `rows` (summary rows; `metas`: task id → its daemon meta, for the
    repository). Returns (files written, problems)."""
    os.makedirs(out_dir, exist_ok=True)
    written, problems = [], []
    for r in rows:
        base, head = r.get("base"), r.get("head")
        meta = metas.get(r.get("task_id") or "") or {}
        repo = meta.get("workspace_repo")
        if not (base and head and repo) or base == head:
            continue
        path = os.path.join(out_dir, file_name(str(r.get("id") or r.get("task_id"))))
        try:
            data = git.format_patch(repo, base, head)
        except WorkspaceError as e:
            problems.append(f"{r.get('id')}: {e}")
            continue
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        written.append(path)
    return written, problems
