"""End to end with the real daemon process (`tinytownd run -c`): kill -9 loses no task."""
import pytest

from tests.support.daemon import DaemonProcess
from tests.support.helpers import run_cli, wait_for
from tests.support.runtime import exclusive_cli, write_config
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town
from tests.support.records import all_records_valid_town


def test_kill9_during_200_tasks_loses_nothing(redis_server, tmpdir_short):
    root = tmpdir_short / "town"
    root.mkdir()
    runs = root / "runs.txt"
    cfg = write_config(root, redis_server.url, town="e2e",
                       agents=[{"name": "w", "cli": "rec", "count": 4}],
                       clis={"rec": {"command": f'cat >/dev/null; sleep 0.02; '
                                                f'echo "$TINYTOWN_TASK_ID" >> {runs}'}},
                       runtime={"heartbeat_interval_s": 0.5, "lease_ttl_s": 5.0,
                                "stale_after_s": 5.0, "block_timeout_s": 0.5})
    town = Town(redis_server.client(), Keys("e2e"))
    d1 = DaemonProcess(root, config=cfg)
    d1.start()
    d2 = None
    try:
        wait_for(lambda: len([a for a in town.list_agents() if a.get("state") == "idle"]) == 4,
              30, what="4 idle agents")
        aids = [a["id"] for a in town.list_agents()]
        tids = town.assign_many([{"aid": aids[i % 4], "description": f"t{i}"}
                                 for i in range(200)])

        def done():
            return sum(1 for t in tids if town.get_task(t)["state"] == "completed")
        wait_for(lambda: done() >= 30, 60, what="30 tasks done")
        d1.kill()
        before = done()
        assert before < 200, "too fast to test a crash in the middle"
        d2 = DaemonProcess(root, config=cfg)
        d2.start()
        wait_for(lambda: done() == 200, 120, what="all 200 tasks completed after restart")
        k = town.keys
        for aid in aids:
            assert town.r.llen(k.inbox(aid)) == 0
            assert town.r.llen(k.inflight(aid)) == 0
        assert town.r.llen(k.deadletter) == 0
        assert all_records_valid_town(town) == []
        ran = set(runs.read_text().split())
        assert set(tids) <= ran
        # the CLI round log of the status command shows the agents
        r = run_cli("agents", "-c", str(cfg), "--json",
                    env={"REDIS_URL": "", "TINYTOWND_CONFIG": ""})
        assert r.returncode == 0, r.stderr
    finally:
        for d in (d1, d2):
            if d is not None:
                d.terminate()
                d.cleanup()
    # after a graceful stop the agents are recorded as stopped and the leases released
    for a in town.list_agents():
        assert a["state"] == "stopped"
        assert not town.r.exists(town.keys.agent_lease(a["id"]))


@pytest.mark.system     # two daemon processes on one town (scripts/test-system)
def test_two_daemons_one_town_never_run_an_agent_twice(redis_server, tmpdir_short):
    locks = tmpdir_short / "locks"
    locks.mkdir()
    viol = tmpdir_short / "violations"
    cmd = exclusive_cli(locks, viol, 0.05)
    cfgs = []
    for name in ("a", "b"):
        root = tmpdir_short / name
        root.mkdir()
        cfgs.append(write_config(root, redis_server.url, town="duo",
                                 agents=[{"name": "w", "cli": "c", "count": 3}],
                                 clis={"c": cmd},
                                 runtime={"heartbeat_interval_s": 0.5, "lease_ttl_s": 3.0,
                                          "stale_after_s": 5.0}))
    town = Town(redis_server.client(), Keys("duo"))
    daemons = [DaemonProcess(c.parent, config=c) for c in cfgs]
    for d in daemons:
        d.start()
    procs = [d.proc for d in daemons]
    try:
        wait_for(lambda: len([a for a in town.list_agents() if a.get("state") == "idle"]) == 3,
              30, what="3 idle agents")
        assert len(town.list_agents()) == 3          # registered once, not per daemon
        aids = [a["id"] for a in town.list_agents()]
        owners = {aid: town.r.get(town.keys.agent_lease(aid)).split()[2] for aid in aids}
        assert set(owners.values()) <= {str(p.pid) for p in procs}
        tids = town.assign_many([{"aid": aids[i % 3], "description": str(i)} for i in range(60)])
        wait_for(lambda: all(town.get_task(t)["state"] == "completed" for t in tids), 60,
              what="60 tasks")
        assert not viol.exists()
        # kill -9 whichever daemon owns the first agent: the other one takes it over
        victim = next(p for p in procs if str(p.pid) == owners[aids[0]])
        next(d for d in daemons if d.proc is victim).kill()
        tids = town.assign_many([{"aid": aids[i % 3], "description": str(i)} for i in range(30)])
        wait_for(lambda: all(town.get_task(t)["state"] == "completed" for t in tids), 60,
              what="30 tasks after the kill")
        survivor = next(p for p in procs if p is not victim)
        for aid in aids:
            assert town.r.get(town.keys.agent_lease(aid)).split()[2] == str(survivor.pid)
        assert not viol.exists()
    finally:
        for d in daemons:
            d.terminate()
            d.cleanup()
