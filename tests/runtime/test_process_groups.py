"""A round ends as a whole, and no CLI outlives the daemon that started it or runs beside its
own re-run: the agent itself records what runs (pid files, a lock directory), not the store."""
import os
import signal
import subprocess
import time

from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.runtime import write_config
from tinytownd.runtime import lifeline
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:           # (gone meanwhile)
        return b""


def pids(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_background_children_end_with_the_round(harness, tmpdir_short):
    bg, kept = tmpdir_short / "bg.pids", tmpdir_short / "kept.pids"
    h = harness([{"name": "w", "cli": "c"}],
                {"c": f"cat >/dev/null; sleep 300 & echo $! >> {bg}; "
                      f"setsid sleep 300 & echo $! >> {kept}; sleep 0.3; echo done"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "leave children behind")
    wait_for(lambda: (h.town.get_task(tid) or {}).get("state") == "completed")
    try:
        wait_for(lambda: not alive(pids(bg)[0]), 10, what="the round's background child gone")
        assert alive(pids(kept)[0])          # its own session: left running on purpose
    finally:
        for pid in pids(kept):
            os.kill(pid, signal.SIGKILL)


def _daemon_with_recorder(tmpdir_short, redis_server, sleep_s: int):
    """A daemon whose one agent runs for `sleep_s`: it records each start (`runs`), holds a lock
    (flock) while it runs (a second copy beside it writes `overlap`) and leaves a background
    child (`children`)."""
    root = tmpdir_short / "town"
    root.mkdir()
    lock, runs = tmpdir_short / "lock", tmpdir_short / "runs"
    overlap, children = tmpdir_short / "overlap", tmpdir_short / "children"
    cmd = (f"cat >/dev/null; echo $$ >> {runs}; exec 9>{lock}; "
           f"flock -n 9 || echo $$ >> {overlap}; "
           f"sleep 300 & echo $! >> {children}; sleep {sleep_s}")
    cfg = write_config(root, redis_server.url, town="pg", agents=[{"name": "w", "cli": "c"}],
                       clis={"c": {"command": cmd, "timeout_s": 600}},
                       runtime={"heartbeat_interval_s": 0.5, "lease_ttl_s": 3.0,
                                "stale_after_s": 3.0})
    return DaemonProcess(root, config=cfg), runs, overlap, children


def test_kill_9_of_the_daemon_ends_its_clis(redis_server, tmpdir_short):
    d, runs, overlap, children = _daemon_with_recorder(tmpdir_short, redis_server, 300)
    town = Town(redis_server.client(), Keys("pg"))
    d.start()
    try:
        aid = wait_for(lambda: town.list_agents() and town.list_agents()[0]["id"])
        tid = town.assign(aid, "long")
        wait_for(lambda: runs.exists() and children.exists(), 15, what="the CLI running")
        first = pids(runs) + pids(children)
        assert all(alive(p) for p in first)
        d.kill()
        wait_for(lambda: not any(alive(p) for p in first), 10,
                 what="the CLI and its child ended with the daemon")
        assert town.get_task(tid)["state"] != "completed"
    finally:
        d.terminate()
        d.cleanup()


def test_a_restarted_daemon_ends_the_crashed_round_before_running_it_again(redis_server,
                                                                         tmpdir_short):
    """Daemon and its lifeline watcher both killed: the CLI survives them; the next daemon on
    the same root ends it (pid and start time recorded) before the task runs again."""
    d, runs, overlap, children = _daemon_with_recorder(tmpdir_short, redis_server, 2)
    town = Town(redis_server.client(), Keys("pg"))
    d.start()
    try:
        aid = wait_for(lambda: town.list_agents() and town.list_agents()[0]["id"])
        tid = town.assign(aid, "again")
        wait_for(lambda: runs.exists(), 15, what="the CLI running")
        time.sleep(0.3)                     # (the watcher saves its list every 0.1 s)
        watcher = [p for p in os.listdir("/proc") if p.isdigit() and
                   b"lifeline_watcher" in cmdline(p) and str(d.root).encode() in cmdline(p)]
        assert watcher, "no lifeline watcher"
        for p in watcher:
            os.kill(int(p), signal.SIGKILL)
        d.kill()
        first = pids(runs)[0]
        assert alive(first)                 # nobody ended it: both are dead
        d.start()
        wait_for(lambda: town.get_task(tid)["state"] == "completed", 40, what="the task re-run")
        assert not overlap.exists(), "the re-run ran beside the crashed round's CLI"
        assert len(pids(runs)) == 2
        assert not alive(first)
    finally:
        d.terminate()
        d.cleanup()


def test_a_recorded_group_whose_leader_exited_is_still_ended(tmpdir_short):
    """The crashed round's shell has finished but its background child still runs in its group
    (and may hold the task's files): a starting daemon ends it too."""
    import json
    import subprocess

    from tinytownd.runtime import lifeline, lifeline_watcher
    sh = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE,
                          start_new_session=True)
    child = int(sh.stdout.readline())
    state = tmpdir_short / "cli-groups.json"
    state.write_text(json.dumps({str(sh.pid): lifeline_watcher.start_time(sh.pid)}))
    sh.wait(10)
    try:
        assert alive(child)
        assert lifeline.end_recorded(state) == 1
        wait_for(lambda: not alive(child), 10, what="the leaderless group ended")
        assert not state.exists()
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_watcher_sees_the_lifeline_cut_while_the_daemon_waits_for_it(tmpdir_short):
    """close() cuts the pipe and waits for the watcher: the cut must reach it during that wait
    (gevent's os.close defers closing a pipe to the loop's next check, which the wait itself
    held back: every runtime close waited out its full timeout)."""
    for _ in range(3):
        line = lifeline.Lifeline(tmpdir_short)
        line.cut()
        try:
            line.proc.wait(2)           # ends in milliseconds; 2 s is only a bound
        except subprocess.TimeoutExpired:
            line.proc.kill()
            line.proc.wait(5)
            raise AssertionError("the watcher did not see the cut while the daemon waited")
