"""Two daemons (two town roots, standing for two hosts) on one Sentinel-watched Redis share the
load of backlog tasks by role; a failover while one daemon is killed (kill -9): the other takes
its agents over (leases) and finishes everything; `status --town` lists the attached daemons."""
import json

import gevent

from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.sentinel import (FAST_RUNTIME, agent_cli, agent_log, completed_count,
                                    master_client, retrying)
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

N_TASKS = 500


def _daemon(root, ha, work, names):
    """A daemon configured with 4 agents per name in `names` (role worker): each host its own
    agents, and the other host's as stand-ins that leases keep from running twice."""
    return DaemonProcess(root, redis=ha.config(), runtime=FAST_RUNTIME,
                         agent_clis={"c": {"command": agent_cli(work, 0.02), "max_attempts": 5}},
                         agents=[{"name": n, "role": "worker", "cli": "c", "count": 4}
                                 for n in names])


def _town_status(d) -> dict:
    r = d.cli("status", "--town", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_two_daemons_share_the_load_and_one_survives_a_failover_and_a_kill(ha, tmpdir_short):
    work = tmpdir_short / "work"
    a = _daemon(tmpdir_short / "a", ha, work, ["a"])
    b = _daemon(tmpdir_short / "b", ha, work, ["b", "a"])
    try:
        town = Town(master_client(ha), Keys("t"))
        a.start()
        wait_for(lambda: len([x for x in retrying(town.list_agents)
                              if x.get("state") == "idle"]) == 4, 30, what="a's 4 idle agents")
        b.start()
        wait_for(lambda: len([x for x in retrying(town.list_agents)
                              if x.get("state") == "idle"]) == 8, 30, what="8 idle agents")
        # both daemons run agents (leases split the agent set), and both are in the registry
        st = wait_for(lambda: (lambda s: s if len(s["daemons"]) == 2 and
                               sum(len(x["agents"]) for x in s["daemons"]) == 8 else None)(
                                   _town_status(a)), 30, what="2 daemons with 8 agents")
        pids = {x["pid"] for x in st["daemons"]}
        assert pids == {a.proc.pid, b.proc.pid}
        assert all(x["agents"] for x in st["daemons"]), st
        assert all(x["heartbeat_age_s"] is not None and x["heartbeat_age_s"] < 30
                   for x in st["daemons"])
        per = {x["pid"]: set(x["agents"]) for x in st["daemons"]}
        assert per[a.proc.pid] == {"a-1", "a-2", "a-3", "a-4"}
        assert per[b.proc.pid] == {"b-1", "b-2", "b-3", "b-4"}
        tids = [town.backlog_add(f"t{i}") for i in range(N_TASKS)]
        town.r.execute_command("WAIT", 1, 5000)
        wait_for(lambda: completed_count(town, tids) >= 100, 120, what="100 tasks done")
        # a failover, and daemon a dies (kill -9) at the same time
        g = gevent.spawn(ha.kill_primary)
        a.kill()
        g.get(timeout=60)
        wait_for(lambda: completed_count(town, tids) == N_TASKS, 240, interval=0.3,
                 what="all tasks completed by the surviving daemon")
        starts, violations = agent_log(work)
        assert violations == []                 # never one agent in two daemons at once
        assert set(tids) <= set(starts)
        print(f"reruns {sum(starts.values()) - N_TASKS}")
            # both hosts did work (the agent log names the agent of every start)
        names = {x["id"]: x["name"] for x in retrying(town.list_agents)}
        ran_by = {names.get(line.split()[2], "?")[0]
                  for line in (work / "agent.log").read_text().splitlines()
                  if line.startswith("START ")}
        assert {"a", "b"} <= ran_by
        # the survivor runs all 8 agents now; the dead one left the registry
        st = wait_for(lambda: (lambda s: s if len(s["daemons"]) == 1 and
                               len(s["daemons"][0]["agents"]) == 8 else None)(_town_status(b)),
                      60, what="registry: 1 daemon with 8 agents")
        assert st["daemons"][0]["pid"] == b.proc.pid
        s = b.status()
        assert s["redis"]["failovers"] >= 1
        assert set(s["services"].values()) == {"running"}
        assert b.stop() == 0
    finally:
        a.cleanup()
        b.cleanup()
