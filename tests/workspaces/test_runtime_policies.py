"""Worktree mode in the runtime: retries continue on the same worktree, keep policies, a branch
name clash, commit: agent, setup — real repositories, real CLIs that edit files."""
import os

import pytest

from tests.support.gitrepo import branches, git, status, worktrees
from tests.support.runtime import wait_for

# attempt 1 writes a file and fails; attempt 2 finds it, adds to it and succeeds
FAIL_ONCE = ('if [ -f attempt1.txt ]; then echo "attempt 2 saw it" >> attempt1.txt; '
             'else echo "written by attempt 1" > attempt1.txt; exit 3; fi')
ENV_CLI = ('printf "%s\\n%s\\n%s\\n%s\\n" "$PWD" "$TINYTOWN_WORKSPACE" "$TINYTOWN_BRANCH" '
           '"$TINYTOWN_BASE" > env.txt')


def _one(ws_harness, repo, command, *, max_attempts=3, **ws):
    h = ws_harness([{"name": "w", "cli": "c",
                     "workspace": {"mode": "worktree", "repo": str(repo), **ws}}],
                   {"c": {"command": command, "max_attempts": max_attempts}})
    aid = wait_for(lambda: list(h.rt.workers) and list(h.rt.workers)[0])
    return h, aid


def _run(h, aid, desc="do the thing", state="completed"):
    tid = h.town.assign(aid, desc)
    wait_for(lambda: (h.town.get_task(tid) or {}).get("state") == state, timeout=60,
             what=f"task {state}")
    # the keep policy runs right after the task's end is recorded: wait for it
    wait_for(lambda: h.town.get_task_meta(tid).get("workspace_ended"), timeout=20,
             what="workspace ended")
    return tid, h.town.get_task_meta(tid)


def test_retry_continues_on_the_same_worktree(ws_harness, repo):
    h, aid = _one(ws_harness, repo, FAIL_ONCE)
    tid, meta = _run(h, aid)
    assert h.town.get_task_meta(tid)["attempts"] == "2"
    got = git(repo, "show", f"{meta['branch']}:attempt1.txt")
    assert got == "written by attempt 1\nattempt 2 saw it\n"
    assert git(repo, "rev-list", "--count", f"{meta['base']}..{meta['branch']}").strip() == "1"
    assert status(repo) == "" and worktrees(repo) == []


def test_environment_and_cwd(ws_harness, repo, tmpdir_short):
    h, aid = _one(ws_harness, repo, ENV_CLI, keep="always")
    tid, meta = _run(h, aid)
    path = meta["worktree"]
    assert path == str(tmpdir_short / "town0" / "workspaces" / tid) and os.path.isdir(path)
    lines = open(os.path.join(path, "env.txt")).read().split("\n")
    assert lines[:4] == [path, path, meta["branch"], meta["base"]]
    assert worktrees(repo) == [path]          # keep: always — still there, on its branch
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD").strip() == meta["branch"]


@pytest.mark.parametrize("keep,fails,dir_stays", [
    ("never", False, False), ("never", True, False),
    ("on_failure", False, False), ("on_failure", True, True),
    ("always", False, True), ("always", True, True)])
def test_keep_policies(ws_harness, repo, keep, fails, dir_stays):
    cmd = "echo change > f.txt" + ("; exit 1" if fails else "")
    h, aid = _one(ws_harness, repo, cmd, keep=keep, max_attempts=1)
    tid, meta = _run(h, aid, state="failed" if fails else "completed")
    assert ("worktree" in meta) == dir_stays
    assert (len(worktrees(repo)) == 1) == dir_stays
    assert meta["workspace_ended"] == ("failed" if fails else "completed")
    if fails:
        # a failed round commits nothing: the branch has no commits; it goes with its directory
        assert meta["head"] == meta["base"]
        assert (meta.get("branch") in branches(repo)) == dir_stays
        if dir_stays:
            assert open(os.path.join(meta["worktree"], "f.txt")).read() == "change\n"
    else:
        assert meta["branch"] in branches(repo)       # a branch with commits always stays
        assert git(repo, "show", f"{meta['branch']}:f.txt") == "change\n"
    h.stop()
    # nothing of the policy's is left behind: no stray worktree registration
    git(repo, "worktree", "prune")
    assert len(worktrees(repo)) == (1 if dir_stays else 0)


def test_no_change_no_commit_branch_deleted(ws_harness, repo):
    h, aid = _one(ws_harness, repo, "true")
    tid, meta = _run(h, aid)
    assert meta["head"] == meta["base"] and meta["files_changed"] == "0"
    assert branches(repo) == [] and worktrees(repo) == []
    assert "branch" not in meta


def test_branch_clash_fails_only_that_task(ws_harness, repo):
    h, aid = _one(ws_harness, repo, "echo x > x.txt", branch="tt/{slug}")
    git(repo, "branch", "tt/taken", "main")
    before = git(repo, "rev-parse", "tt/taken")
    bad = h.town.assign(aid, "taken")
    wait_for(lambda: (h.town.get_task(bad) or {}).get("state") == "failed", timeout=30)
    meta = h.town.get_task_meta(bad)
    assert meta["attempts"] == "1"                 # a clash is not retried
    assert "already exists" in meta["last_error"] and "tt/taken" in meta["last_error"]
    assert git(repo, "rev-parse", "tt/taken") == before        # never overwritten
    good, gmeta = _run(h, aid, "free name")
    assert gmeta["branch"] == "tt/free-name"
    assert git(repo, "show", "tt/free-name:x.txt") == "x\n"
    assert worktrees(repo) == [] and "branch" not in meta


def test_commit_agent_leaves_the_tree(ws_harness, repo):
    cmd = ('echo committed > a.txt && git add a.txt && '
           'git -c user.name=me -c user.email=me@x.invalid commit -qm "agent commit" && '
           'echo loose > b.txt')
    h, aid = _one(ws_harness, repo, cmd, commit="agent", keep="always")
    tid, meta = _run(h, aid)
    br = meta["branch"]
    assert git(repo, "log", "-1", "--format=%s|%an", br).strip() == "agent commit|me"
    assert git(repo, "rev-list", "--count", f"{meta['base']}..{br}").strip() == "1"
    assert git(meta["worktree"], "status", "--porcelain").strip() == "?? b.txt"
    assert meta["head"] == git(repo, "rev-parse", br).strip()
    assert meta["files_changed"] == "1"


def test_setup_runs_once_per_worktree(ws_harness, repo, tmpdir_short):
    runs = tmpdir_short / "setup-runs"
    h, aid = _one(ws_harness, repo, FAIL_ONCE, setup=f'echo "$PWD" >> {runs}; touch .deps')
    tid, meta = _run(h, aid)
    assert runs.read_text().split("\n")[:-1] == [str(tmpdir_short / "town0" / "workspaces" / tid)]
    assert git(repo, "show", f"{meta['branch']}:.deps") == ""


def test_failing_setup_is_a_failed_round(ws_harness, repo):
    h, aid = _one(ws_harness, repo, "echo y > y.txt", setup="echo broken deps; exit 7",
                  max_attempts=2)
    tid, meta = _run(h, aid, state="failed")
    assert meta["attempts"] == "2" and "setup failed (exit status 7)" in meta["last_error"]
    assert worktrees(repo) == [] or meta.get("worktree")


def test_repo_gone_defers_without_using_attempts(ws_harness, repo, tmpdir_short):
    h, aid = _one(ws_harness, repo, "echo z > z.txt")
    os.rename(repo, str(repo) + ".away")
    tid = h.town.assign(aid, "wait for the repo")
    wait_for(lambda: (h.rt.workers[aid].problem or "").startswith("workspace"), timeout=30)
    assert (h.town.get_task(tid) or {}).get("state") != "failed"
    os.rename(str(repo) + ".away", repo)
    wait_for(lambda: (h.town.get_task(tid) or {}).get("state") == "completed", timeout=60)
    assert h.town.get_task_meta(tid)["attempts"] == "1"
