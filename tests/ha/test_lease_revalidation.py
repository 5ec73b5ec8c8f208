"""Leases after a failover: an agent lease whose write died with the old primary (gone on the new
one) is taken back by the daemon that runs the agent; a standby daemon configured with the same
agents does not start them meanwhile (acquisitions are held just after a change)."""
from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.sentinel import FAST_RUNTIME, agent_cli, agent_log, master_client, retrying
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


def _daemon(root, ha, work):
    return DaemonProcess(root, redis=ha.config(), runtime=FAST_RUNTIME,
                         agent_clis={"c": {"command": agent_cli(work, 0.3), "max_attempts": 5}},
                         agents=[{"name": "w", "role": "worker", "cli": "c", "count": 4}])


def test_a_lost_lease_write_never_lets_a_second_daemon_run_the_agent(ha, tmpdir_short):
    work = tmpdir_short / "work"
    a = _daemon(tmpdir_short / "a", ha, work)
    b = _daemon(tmpdir_short / "b", ha, work)
    try:
        town = Town(master_client(ha), Keys("t"))
        a.start()
        wait_for(lambda: len([x for x in retrying(town.list_agents)
                              if x.get("state") == "idle"]) == 4, 30, what="4 idle agents")
        b.start()                                 # the standby: every lease is held by a
        aids = sorted(x["id"] for x in town.list_agents())
        owner = town.r.get(town.keys.agent_lease(aids[0]))
        tids = [town.backlog_add(f"t{i}") for i in range(200)]
        wait_for(lambda: retrying(lambda: town.r.llen(town.keys.backlog)) < 180, 60,
                 what="work under way")
        for _ in range(2):
            # the lease writes "die with the old primary": the replica about to be promoted
            # loses its copies just before the switch (a renewal replicates as PEXPIRE, which
            # does not bring a missing key back)
            rep = ha.nodes[ha.replica_ports()[0]].client()

            def lose_leases():
                rep.config_set("replica-read-only", "no")
                assert rep.delete(*[town.keys.agent_lease(x) for x in aids]) == len(aids)
                rep.config_set("replica-read-only", "yes")
            ha.failover(before=lose_leases)
            p = ha.primary().client()
            # a takes them back (it still runs the agents); b never starts them
            wait_for(lambda: all(p.get(town.keys.agent_lease(x)) == owner for x in aids), 30,
                     what="leases taken back by a")
            _, violations = agent_log(work)
            assert violations == []
        wait_for(lambda: all(retrying(lambda: town.get_task(t))["state"] == "completed"
                             for t in tids), 180, interval=0.3, what="all tasks completed")
        starts, violations = agent_log(work)
        assert violations == []
        assert b.status()["components"]["runtime"]["agents_running"] == 0
        assert any("taken back" in line for line in a.stdout_lines())
    finally:
        a.cleanup()
        b.cleanup()
