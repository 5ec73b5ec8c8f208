#!/usr/bin/env python3
"""Worktree-mode benchmark: what a task's workspace costs, and what it does to a whole batch.

    .venv/bin/python bench/bench_workspaces.py [overhead] [e2e] [-n 20] [--files 5000]
                                               [--tasks 200] [--agents 8] [--e2e-files 200]

  overhead  on a generated repository of --files files (default 5,000): per task, tinytownd's
            workspace (WorkspaceManager.prepare → the agent's one-file change → complete:
            commit auto, diffstat, record in Redis, keep on_failure → worktree removed) against
            raw `git worktree add -b` + `git worktree remove` (+ `git branch -D`) of the same
            repository, the two interleaved task by task in the same run (-n of each); raw with
            a commit of the same change is shown too. Goal: ≤ 1.3× raw.
  e2e       `tinytownd batch` (embedded) of --tasks tasks over --agents agents whose CLI appends a
            line to a file, in worktree mode on a generated repository of --e2e-files files (default
            200: each task checks the whole tree out, and 200 checkouts of 5,000 files take
            several minutes on this machine), then
            the same batch in shared mode; every branch is checked (exactly its own line), and
            the wall-time ratio worktree / shared is reported.
Each measurement prints one JSON line; a summary line comes last. Redis: a private redis-server
on a unix socket in a temp dir (overhead), the batch's own (e2e); all stopped, temp dirs removed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gevent import monkey  # noqa: E402

monkey.patch_all()

from tests.support.gitrepo import git, make_repo, worktrees  # noqa: E402

BIN = os.path.dirname(sys.executable)


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stats(xs: list[float]) -> dict:
    return {"mean_ms": round(statistics.mean(xs) * 1000, 1),
            "median_ms": round(statistics.median(xs) * 1000, 1),
            "min_ms": round(min(xs) * 1000, 1), "n": len(xs)}


# ----------------------------------------------------------------------------- overhead
def overhead(n: int, files: int, tmp: str) -> dict:
    from tests.support.helpers import RedisServer
    from tinytownd.store.keys import Keys
    from tinytownd.workspaces.manager import WorkspaceManager
    from tinytownd.workspaces.spec import WorkspaceSettings

    t0 = time.monotonic()
    repo = make_repo(__import__("pathlib").Path(tmp) / "repo", n_files=files)
    gen_s = time.monotonic() - t0
    base = git(repo, "rev-parse", "HEAD").strip()
    server = RedisServer(__import__("pathlib").Path(tmp) / "redis").start()
    try:
        r = server.client()
        keys = Keys("bench")

        class Log:
            def info(self, *a, **k): pass
            def warning(self, *a, **k): print("warning", a, k, file=sys.stderr)

        wsdir = os.path.join(tmp, "workspaces")
        mgr = WorkspaceManager(r, keys, log=Log(), dirs=lambda: {wsdir})
        settings = type("S", (), {"name": "bench", "timeout_s": 60, "workspace": WorkspaceSettings(
            repo=str(repo), base="HEAD", branch="tt/{task_short}-{slug}", dir=wsdir,
            commit="auto", keep="on_failure", setup=None)})()
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x.invalid", "LC_ALL": "C"}

        def sh(*args):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def raw(i: int, commit: bool) -> float:
            path = os.path.join(tmp, f"raw-{i}-{int(commit)}")
            br = f"raw/{i}-{int(commit)}"
            t = time.monotonic()
            sh("worktree", "add", "-q", "-b", br, path, base)
            change(path, i)
            if commit:
                subprocess.run(["git", "-C", path, "add", "-A"], check=True, env=env)
                subprocess.run(["git", "-C", path, "commit", "-qm", f"task {i}"], check=True,
                               env=env)
            sh("worktree", "remove", "--force", path)
            dt = time.monotonic() - t
            if not commit:
                sh("branch", "-D", "-q", br)
            return dt

        def ours(i: int) -> float:
            tid = f"{i:08d}-0000-4000-8000-000000000000"
            t = time.monotonic()
            ws = mgr.prepare(settings, tid, {"description": f"bench task {i}"}, {},
                             env=env, logs_dir=tmp)
            change(ws.path, i)
            mgr.complete(ws, agent="bench", description=f"bench task {i}")
            dt = time.monotonic() - t
            meta = r.hgetall(keys.task_meta(tid))
            assert meta["files_changed"] == "1" and "workspace" not in meta, meta
            assert not os.path.exists(ws.path)
            return dt

        raw(-1, False), ours(10_000), raw(-2, True)          # warm-up (page cache, imports)
        a, b, c = [], [], []
        for i in range(n):
            a.append(raw(i, False))
            b.append(ours(i))
            c.append(raw(i, True))
        res = {"bench": "workspace_overhead", "files": files, "repo_generate_s": round(gen_s, 2),
               "raw_add_remove": stats(a), "tinytownd": stats(b), "raw_add_commit_remove": stats(c),
               "ratio_vs_raw_mean": round(statistics.mean(b) / statistics.mean(a), 3),
               "ratio_vs_raw_median": round(statistics.median(b) / statistics.median(a), 3),
               "ratio_vs_raw_with_commit_median": round(
                   statistics.median(b) / statistics.median(c), 3),
               "load": load()}
        return emit(res)
    finally:
        server.stop()


def change(path: str, i: int) -> None:
    with open(os.path.join(path, "src", "d000", "f00000.txt"), "a") as f:
        f.write(f"task {i}\n")


# ----------------------------------------------------------------------------- e2e
CLI = 'echo "$TINYTOWN_TASK_ID" >> appended.txt'


def batch_file(path: str, tasks: int, agents: int, worktree: bool) -> str:
    lines = ["agent_clis:", f"  a: {{command: {json.dumps(CLI)}, max_attempts: 2}}",
             f"agents: [{{name: w, role: worker, cli: a, count: {agents}}}]"]
    if worktree:
        lines.append("workspace: {mode: worktree, repo: .}")
    lines.append("tasks:")
    lines += [f"  - {{id: t{i}, description: \"append line {i}\"}}" for i in range(tasks)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_batch(tmp: str, name: str, cwd: str, tasks: int, agents: int, worktree: bool) -> dict:
    f = batch_file(os.path.join(tmp, f"{name}.yaml"), tasks, agents, worktree)
    summ = os.path.join(tmp, f"{name}.json")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    t = time.monotonic()
    p = subprocess.run([os.path.join(BIN, "tinytownd"), "batch", f, "--dir",
                        os.path.join(tmp, f"{name}-dir"), "--progress", "none", "--summary", summ],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    total = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"{name} batch failed ({p.returncode}): {p.stderr[-2000:]}")
    doc = json.load(open(summ))
    return {"wall_time_s": doc["wall_time_s"], "command_s": round(total, 2), "doc": doc}


def e2e(tasks: int, agents: int, files: int, tmp: str) -> dict:
    from pathlib import Path
    repo = make_repo(Path(tmp) / "repo", {"appended.txt": "base\n"}, n_files=files)
    shared_dir = Path(tmp) / "shared"
    shared_dir.mkdir()
    wt = run_batch(tmp, "worktree", str(repo), tasks, agents, True)
    sh = run_batch(tmp, "shared", str(shared_dir), tasks, agents, False)
    bad = 0
    for t in wt["doc"]["tasks"]:
        diff = git(repo, "diff", "-U0", t["base"], t["branch"], "--", "appended.txt")
        added = [x[1:] for x in diff.split("\n") if x.startswith("+") and not x.startswith("+++")]
        if added != [t["task_id"]] or t["files_changed"] != 1 or t["state"] != "completed":
            bad += 1
    shared_lines = len((shared_dir / "appended.txt").read_text().split())
    res = {"bench": "workspace_e2e", "tasks": tasks, "agents": agents, "repo_files": files,
           "worktree_wall_s": wt["wall_time_s"], "shared_wall_s": sh["wall_time_s"],
           "worktree_command_s": wt["command_s"], "shared_command_s": sh["command_s"],
           "ratio_worktree_vs_shared": round(wt["wall_time_s"] / sh["wall_time_s"], 2),
           "worktree_per_task_ms": round(wt["wall_time_s"] / tasks * 1000, 1),
           "branches_checked": tasks, "branches_wrong": bad,
           "main_untouched": git(repo, "status", "--porcelain") == "",
           "worktrees_left": len(worktrees(repo)),
           "shared_lines": shared_lines, "load": load()}
    return emit(res)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["overhead", "e2e"], choices=["overhead", "e2e"])
    ap.add_argument("-n", type=int, default=20, help="overhead: tasks of each kind")
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--e2e-files", type=int, default=200)
    args = ap.parse_args()
    out = {"bench": "workspaces", "load_before": load(), "git": git(".", "--version").strip()}
    for what in args.what:
        tmp = tempfile.mkdtemp(prefix="tt-bench-ws-")
        try:
            if what == "overhead":
                out["overhead"] = overhead(args.n, args.files, tmp)
            else:
                out["e2e"] = e2e(args.tasks, args.agents, args.e2e_files, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = load()
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
