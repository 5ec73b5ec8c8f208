"""Worktree mode in the runtime: real repositories, real CLIs that edit files."""
from tests.support.gitrepo import APPEND_CLI, branches, git, status, worktrees
from tests.support.runtime import wait_for


def _agents(n, repo, **ws):
    return [{"name": "w", "cli": "edit", "count": n,
             "workspace": {"mode": "worktree", "repo": str(repo), **ws}}]


def test_eight_agents_one_file_eight_branches(ws_harness, repo):
    h = ws_harness(_agents(8, repo), {"edit": APPEND_CLI})
    aids = wait_for(lambda: len(h.rt.workers) == 8 and list(h.rt.workers))
    tids = [h.town.assign(aid, f"edit the notes, agent {i}") for i, aid in enumerate(aids)]
    wait_for(lambda: all((h.town.get_task(t) or {}).get("state") == "completed" for t in tids),
             timeout=60)
    assert status(repo) == "" and (repo / "notes.txt").read_text() == "line 0\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    got = branches(repo)
    assert len(got) == 8
    for tid in tids:
        meta = h.town.get_task_meta(tid)
        br = meta["branch"]
        assert br in got and br.startswith(f"tt/{tid[:8]}-edit-the-notes-agent")
        assert git(repo, "rev-parse", br).strip() == meta["head"] != meta["base"]
        assert git(repo, "rev-parse", "main").strip() == meta["base"]
        diff = git(repo, "diff", "--name-only", meta["base"], br).split()
        assert sorted(diff) == sorted(["notes.txt", f"own-{tid}.txt"])
        notes = git(repo, "show", f"{br}:notes.txt")
        assert notes.split("\n")[1:] == [f"task {tid} by " + notes.split(" by ")[1].split("\n")[0], ""]
        assert (meta["files_changed"], meta["insertions"], meta["deletions"]) == ("2", "2", "0")
        assert git(repo, "show", f"{br}:own-{tid}.txt").strip() == br
        log = git(repo, "log", "-1", "--format=%an|%s", br).strip()
        assert log.startswith("w-") and log.endswith(f"|edit the notes, agent {tids.index(tid)}")
        assert "worktree" not in meta          # completed + keep on_failure: directory removed
    assert worktrees(repo) == []
