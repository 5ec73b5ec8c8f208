"""kill -9 of the daemon during a worktree-mode round: after a restart the task finishes on its
worktree (what the killed round wrote is still there), and no stray worktree or lock is left."""
import os
import time

from tests.support.daemon import DaemonProcess
from tests.support.gitrepo import git, status, worktrees
from tests.support.helpers import wait_for
from tests.support.runtime import write_config
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

# the first round writes first.txt and hangs (the daemon is killed then); the next one finishes
HANG_ONCE = ('if [ -f first.txt ]; then echo "finished after the crash" >> first.txt; '
             'else echo "written before the crash" > first.txt; sleep 60; fi')


def _leftover_locks(repo):
    found = []
    for d, _dirs, files in os.walk(repo / ".git"):
        found += [os.path.join(d, f) for f in files if f.endswith(".lock") or f == "locked"]
    return found


def test_kill9_mid_round_then_restart_finishes_on_its_worktree(redis_server, tmpdir_short, repo):
    root = tmpdir_short / "town"
    root.mkdir()
    cfg = write_config(root, redis_server.url, town="crash",
                       agents=[{"name": "w", "cli": "c",
                                "workspace": {"mode": "worktree", "repo": str(repo)}}],
                       clis={"c": {"command": HANG_ONCE}},
                       runtime={"heartbeat_interval_s": 0.5, "lease_ttl_s": 3.0,
                                "stale_after_s": 3.0, "block_timeout_s": 0.5})
    town = Town(redis_server.client(), Keys("crash"))
    d1 = DaemonProcess(root, config=cfg).start()
    d2 = None
    try:
        aid = wait_for(lambda: [a["id"] for a in town.list_agents()
                                if a.get("state") == "idle"], 30, what="idle agent")[0]
        tid = town.assign(aid, "survive a crash")
        wt = root / "workspaces" / tid
        wait_for(lambda: (wt / "first.txt").exists(), 30, what="the first round started")
        d1.kill()
        time.sleep(0.5)
        assert worktrees(repo) == [str(wt)]              # the crash left it: reattached later
        d2 = DaemonProcess(root, config=cfg).start()
        wait_for(lambda: town.get_task(tid)["state"] == "completed", 60, what="task completed")
        meta = town.get_task_meta(tid)
        wait_for(lambda: town.get_task_meta(tid).get("workspace_ended"), 20)
        meta = town.get_task_meta(tid)
        assert git(repo, "show", f"{meta['branch']}:first.txt") == \
            "written before the crash\nfinished after the crash\n"
        assert git(repo, "rev-list", "--count", f"{meta['base']}..{meta['branch']}").strip() == "1"
        assert not wt.exists() and worktrees(repo) == []
        assert _leftover_locks(repo) == []
        assert status(repo) == ""
        assert not town.r.sismember(town.keys.workspaces, tid)
    finally:
        for d in (d1, d2):
            if d is not None:
                d.terminate()
                d.cleanup()
