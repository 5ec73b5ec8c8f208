"""What a batch leaves for review besides its summary: `--patches DIR` (one format-patch per task
with changes, workspaces/patches.py) and `--junit PATH` (batch/junit.py)."""
from __future__ import annotations

import os

from .junit import report


def write(batch, doc: dict, *, patches_dir: str | None, junit_path: str | None) -> list[str]:
    """Write the artifacts asked for; lines for the human summary (where they went, problems).
    `doc` gains `patches` (the files) and `patches_dir`."""
    notes = []
    try:
        _write(batch, doc, patches_dir, junit_path, notes)
    except OSError as e:       # the summary still goes out; the artifact's problem is named
        notes.append(f"artifact not written: {e}")
    return notes


def _write(batch, doc, patches_dir, junit_path, notes) -> None:
    if patches_dir:
        from tinytownd.workspaces.patches import export
        rows = [t for t in doc.get("tasks", []) if t.get("task_id") and t.get("base")]
        p = batch.redis.pipeline(transaction=False)
        for t in rows:
            p.hget(batch.keys.task_meta(t["task_id"]), "workspace_repo")
        repos = {t["task_id"]: {"workspace_repo": repo} for t, repo in zip(rows, p.execute())} \
            if rows else {}
        written, problems = export(rows, repos, patches_dir)
        doc["patches_dir"] = os.path.abspath(patches_dir)
        doc["patches"] = [os.path.basename(w) for w in written]
        notes.append(f"patches: {len(written)} in {os.path.abspath(patches_dir)}"
                     + (" (git am applies them onto each task's base)" if written else ""))
        notes += [f"patch not written: {p}" for p in problems]
    if junit_path:
        data = report(doc)
        tmp = f"{junit_path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(junit_path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, junit_path)
        notes.append(f"junit: {os.path.abspath(junit_path)}")
