"""`tinytownd task show` and `tinytownd workspaces list|prune` on worktree-mode tasks, and the
start-up sweep after a crash (prune, reattach, the keep policy of tasks that ended meanwhile)."""
import json
import os

from tests.support.gitrepo import branches, git, worktrees
from tests.support.helpers import run_cli
from tests.support.runtime import wait_for

ENV = {"REDIS_URL": "", "TINYTOWND_CONFIG": ""}


def _cli(h, *args):
    r = run_cli(*args, "-c", h.cfg.path, env=ENV)
    return r


def _agents(repo, **ws):
    return [{"name": "w", "cli": "c", "workspace": {"mode": "worktree", "repo": str(repo), **ws}}]


def test_task_show_and_workspaces_list_prune(ws_harness, repo):
    cmd = ('echo "$TINYTOWN_TASK_ID" > out.txt; '
           'case "$(head -c 4 "$TINYTOWN_PROMPT_FILE" >/dev/null; cat)" in *FAIL*) exit 1;; esac')
    h = ws_harness(_agents(repo), {"c": {"command": cmd, "max_attempts": 1}})
    aid = wait_for(lambda: list(h.rt.workers) and list(h.rt.workers)[0])
    ok = h.town.assign(aid, "write out")
    bad = h.town.assign(aid, "please FAIL")
    for tid in (ok, bad):
        wait_for(lambda: h.town.get_task_meta(tid).get("workspace_ended"), 60)
    r = _cli(h, "task", "show", ok, "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)["workspace"]
    meta = h.town.get_task_meta(ok)
    assert shown == {"branch": meta["branch"], "base": meta["base"], "head": meta["head"],
                     "files_changed": 1, "insertions": 1, "deletions": 0, "worktree": None}
    r = _cli(h, "task", "show", ok)
    assert f"workspace.branch: {meta['branch']}" in r.stdout
    assert "workspace.files_changed: 1" in r.stdout

    r = _cli(h, "workspaces", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["task"] for x in rows] == [bad]          # the completed one was removed
    (row,) = rows
    bmeta = h.town.get_task_meta(bad)
    assert row["state"] == "kept" and row["task_state"] == "failed"
    assert row["path"] == bmeta["worktree"] and row["bytes"] > 0
    assert "kept" in _cli(h, "workspaces").stdout             # list is the default

    r = _cli(h, "workspaces", "prune", "--json")              # on_failure keeps it
    assert json.loads(r.stdout)["pruned"] == [] and os.path.isdir(bmeta["worktree"])
    r = _cli(h, "workspaces", "prune", "--all", "--json")
    assert json.loads(r.stdout)["pruned"] == [bad], r.stdout + r.stderr
    assert not os.path.exists(bmeta["worktree"]) and worktrees(repo) == []
    assert branches(repo) == [meta["branch"]]   # the failed one had no commits: deleted
    assert json.loads(_cli(h, "workspaces", "list", "--json").stdout) == []


def test_startup_after_crash_prunes_reattaches_and_applies_keep(ws_harness, repo, tmpdir_short):
    hang = 'echo partial > partial.txt; sleep 30'
    h = ws_harness(_agents(repo, keep="never"), {"c": {"command": hang}},
                   root_name="town")
    aid = wait_for(lambda: list(h.rt.workers) and list(h.rt.workers)[0])
    live = h.town.assign(aid, "keeps going")
    wt = tmpdir_short / "town" / "workspaces" / live
    wait_for(lambda: (wt / "partial.txt").exists(), 30)
    h.crash()
    # meanwhile: a second task's worktree whose task an operator failed, a stray registration
    # whose directory was removed by hand, and a file outside `dir` that must survive
    outside = tmpdir_short / "outside.txt"
    outside.write_text("mine\n")
    git(repo, "worktree", "add", "-q", str(tmpdir_short / "stray"), "-b", "stray", "main")
    git(repo, "worktree", "lock", str(tmpdir_short / "stray"))      # a lock is respected
    ended = h.town.assign(aid, "ended while down")
    ended_wt = tmpdir_short / "town" / "workspaces" / ended
    git(repo, "worktree", "add", "-q", str(ended_wt), "-b", "tt/ended", "main")
    h.town.r.hset(h.keys.task_meta(ended), mapping={
        "branch": "tt/ended", "base": git(repo, "rev-parse", "main").strip(),
        "worktree": str(ended_wt), "workspace_repo": str(repo),
        "workspace_git": str(repo / ".git"), "workspace_dir": str(tmpdir_short / "town" / "workspaces"),
        "workspace_keep": "never", "workspace_commit": "auto"})
    h.town.r.sadd(h.keys.workspaces, ended)
    h.town.fail_task(ended, "operator")
    # the live task's CLI ends with the crash; the next daemon takes the work over
    h2 = ws_harness(_agents(repo, keep="never"),
                    {"c": {"command": 'cat partial.txt > seen.txt'}}, root_name="town")
    wait_for(lambda: not ended_wt.exists(), 30, what="ended task's worktree removed")
    wait_for(lambda: "tt/ended" not in branches(repo), 20)   # no commits: deleted with it
    wait_for(lambda: h2.town.get_task(live)["state"] == "completed", 60)
    meta = h2.town.get_task_meta(live)
    assert git(repo, "show", f"{meta['branch']}:seen.txt") == "partial\n"
    wait_for(lambda: worktrees(repo) == [str(tmpdir_short / "stray")], 20)
    assert outside.read_text() == "mine\n"


def test_records_pointing_outside_dir_never_delete_anything(ws_harness, repo, tmpdir_short):
    h = ws_harness(_agents(repo, keep="never"), {"c": {"command": "true"}}, root_name="town")
    victims = []
    for n, (wdir, path) in enumerate([
            (tmpdir_short, None),                              # a dir the config does not name
            (tmpdir_short / "town" / "workspaces", tmpdir_short / "precious"),   # not dir/<id>
            ("/", None)]):
        tid = f"0000000{n}-0000-4000-8000-000000000000"
        target = path or (tmpdir_short / tid if wdir != "/" else tmpdir_short / "rootish")
        target.mkdir(exist_ok=True)
        (target / "keep.txt").write_text("mine\n")
        victims.append(target)
        h.town.r.hset(h.keys.task_meta(tid), mapping={
            "branch": f"tt/x{n}", "base": "0" * 40, "worktree": str(target),
            "workspace_repo": str(repo), "workspace_git": str(repo / ".git"),
            "workspace_dir": str(wdir), "workspace_keep": "never", "workspace_commit": "auto"})
        h.town.r.sadd(h.keys.workspaces, tid)
    r = _cli(h, "workspaces", "prune", "--all", "--json")
    assert r.returncode == 0, r.stderr
    for v in victims:       # (the daemon's own sweep may have met them first: the same rule)
        assert (v / "keep.txt").read_text() == "mine\n", v
