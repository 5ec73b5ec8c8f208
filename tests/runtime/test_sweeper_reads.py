"""The sweeper reads only agents this daemon does not run (their hashes were the pickup tail
with 1,000 agents), and still finds a dead one among many of its own."""
from tests.support.runtime import wait_for


def _hgetall_calls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def test_sweep_with_only_own_agents_reads_no_agent_hash(harness):
    h = harness([{"name": "a", "cli": "ok", "count": 30}], {"ok": "true"}, town="swr",
                runtime={"sweep_interval_s": 3600})
    wait_for(lambda: len(h.rt.workers) == 30 and all(w.idle for w in h.rt.workers.values()))
    r = h.town.r
    before = _hgetall_calls(r)
    assert h.rt.sweeper.sweep_once() == []
    assert _hgetall_calls(r) == before


def test_dead_agent_among_many_own_is_recovered_to_one_of_them(harness):
    h = harness([{"name": "a", "cli": "ok", "count": 30, "role": "worker"}], {"ok": "true"},
                town="swr2", runtime={"sweep_interval_s": 3600})
    town = h.town
    wait_for(lambda: len(h.rt.workers) == 30 and all(w.idle for w in h.rt.workers.values()))
    dead = town.register_agent("dead", role="worker")
    town.r.hset(town.keys.agent(dead), mapping={"state": "working",
                                                "last_heartbeat": "2020-01-01T00:00:00+00:00"})
    town.r.hset(town.keys.agent_info(dead), mapping={"owner": "gone host 1"})
    tid = town.assign(dead, "left behind")
    done = h.rt.sweeper.sweep_once()
    assert [d["agent"] for d in done] == [dead]
    assert done[0]["destination"] in h.rt.workers
    wait_for(lambda: town.get_task(tid)["state"] == "completed")
    assert town.get_agent(dead)["state"] == "stopped"
