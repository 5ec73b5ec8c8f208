"""500 tasks over 8 agents through a failover (SENTINEL FAILOVER, and kill -9 of the primary):
every task ends completed (reruns allowed and counted: at-least-once), the agent CLI's own log
shows no agent run twice at once, and no service of the daemon crashes."""

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.sentinel import (FAST_RUNTIME, agent_cli, agent_log, completed_count,
                                    master_client, retrying)
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

N_TASKS = 500
N_AGENTS = 8


def _daemon(root, ha, work, **redis):
    return DaemonProcess(root, redis=ha.config(**redis), runtime=FAST_RUNTIME,
                         agent_clis={"c": {"command": agent_cli(work), "max_attempts": 5}},
                         agents=[{"name": "w", "role": "worker", "cli": "c",
                                  "count": N_AGENTS}])


def _services_ok(d: DaemonProcess) -> None:
    st = d.status()
    assert set(st["services"].values()) == {"running"}, st["services"]
    crashed = {n: s for n, s in st["service_details"].items() if s["restarts"]}
    assert not crashed, crashed


@pytest.mark.parametrize("how", ["sentinel_failover", "kill9"])
def test_500_tasks_through_a_failover(ha, tmpdir_short, how):
    work = tmpdir_short / "work"
    d = _daemon(tmpdir_short / "d", ha, work)
    try:
        d.start()
        town = Town(master_client(ha), Keys("t"))
        wait_for(lambda: len([a for a in retrying(town.list_agents)
                              if a.get("state") == "idle"]) == N_AGENTS, 30,
                 what="8 idle agents")
        aids = sorted(a["id"] for a in town.list_agents())
        tids = town.assign_many([{"aid": aids[i % N_AGENTS], "description": f"t{i}"}
                                 for i in range(N_TASKS)])
        town.r.execute_command("WAIT", 1, 5000)        # the test's own writes are on the replica
        wait_for(lambda: completed_count(town, tids) >= 100, 120, what="100 tasks done")
        before = completed_count(town, tids)
        assert before < N_TASKS, "too fast to fail over in the middle"
        old = ha.primary_port()
        new = ha.failover() if how == "sentinel_failover" else ha.kill_primary()
        assert new != old
        wait_for(lambda: completed_count(town, tids) == N_TASKS, 180, interval=0.2,
                 what="all 500 tasks completed after the failover")
        starts, violations = agent_log(work)
        assert violations == []                          # the agent CLI's own log
        assert set(tids) <= set(starts)
        reruns = sum(starts.values()) - N_TASKS
        print(f"{how}: {before} done before, reruns {reruns}")
        st = retrying(d.status)
        assert st["redis"]["failovers"] >= 1
        assert st["redis"]["primary"] == f"127.0.0.1:{new}"
        _services_ok(d)
        assert d.stop() == 0
    finally:
        d.cleanup()
