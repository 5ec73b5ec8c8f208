"""Several runtimes on one Redis: backlog claims never double-claim, an agent never runs twice,
a lapsed lease is taken over, the sweeper recovers dead agents' queues."""
import json

import gevent

from tests.support.runtime import exclusive_cli, wait_for, write_config
from tests.support.records import all_records_valid_town
from tinytownd.store import records
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


def test_backlog_claim_contention_never_double_claims(redis_server):
    town = Town(redis_server.client(max_connections=200), Keys("c"))
    aids = [town.register_agent(f"a{i}") for i in range(40)]
    tids = [town.backlog_add(f"t{i}") for i in range(300)]
    k = town.keys
    claimed = []

    def claimer(aid):
        while True:
            keys, args = town.claim_call(aid, ["worker"], 20)
            tid = town.scripts.claim_backlog(keys=keys, args=args)[0]
            if not tid:
                if not town.r.llen(k.backlog):
                    return
                continue
            claimed.append((tid, aid))

    gevent.joinall([gevent.spawn(claimer, a) for a in aids], raise_error=True)
    assert sorted(t for t, _a in claimed) == sorted(tids)          # each exactly once
    msgs = [json.loads(m) for a in aids for m in town.r.lrange(k.inbox(a), 0, -1)]
    assert sorted(m["task_id"] for m in msgs) == sorted(tids)
    for tid, aid in claimed:
        t = town.get_task(tid)
        assert t["state"] == "assigned" and t["assigned_to"] == aid
    assert all_records_valid_town(town) == []


def test_two_runtimes_never_run_the_same_agent(harness, tmpdir_short):
    locks = tmpdir_short / "locks"
    locks.mkdir()
    viol = tmpdir_short / "violations"
    cmd = exclusive_cli(locks, viol, 0.02)
    agents = [{"name": "w", "cli": "c", "count": 3}]
    a = harness(agents, {"c": cmd}, root_name="a", town="two")
    b = harness(agents, {"c": cmd}, root_name="b", town="two")
    wait_for(lambda: len(a.rt.workers) + len(b.rt.workers) >= 3)
    gevent.sleep(0.5)
    running_a = {aid for aid, w in a.rt.workers.items() if not w.greenlet.dead}
    running_b = {aid for aid, w in b.rt.workers.items() if not w.greenlet.dead}
    assert not running_a & running_b
    assert len(running_a | running_b) == 3
    assert len(a.town.list_agents()) == 3            # no twins from double registration
    aids = sorted(running_a | running_b)
    tids = a.town.assign_many([{"aid": aids[i % 3], "description": str(i)} for i in range(60)])
    wait_for(lambda: all(a.town.get_task(t)["state"] == "completed" for t in tids), timeout=60)
    assert not viol.exists()
    # the first runtime dies without releasing anything: the other takes its agents over once
    # their leases lapse, and their queued work still completes
    first, second = (a, b) if running_a else (b, a)
    first.crash()
    tids2 = second.town.assign_many([{"aid": aids[i % 3], "description": str(i)}
                                     for i in range(30)])
    wait_for(lambda: all(second.town.get_task(t)["state"] == "completed" for t in tids2),
             timeout=30)
    assert {aid for aid, w in second.rt.workers.items() if not w.greenlet.dead} == set(aids)
    assert not viol.exists()


def _dead_agent(town, name, role="worker"):
    """An agent a crashed daemon ran: info hash, stale heartbeat, no lease."""
    aid = town.register_agent(name, role=role)
    old = "2020-01-01T00:00:00+00:00"
    town.r.hset(town.keys.agent(aid), mapping={"state": "working", "last_heartbeat": old})
    town.r.hset(town.keys.agent_info(aid), mapping={"owner": "gone host 1"})
    return aid


def test_sweeper_moves_dead_agents_work_to_live_agent(harness):
    h = harness([{"name": "live", "cli": "ok", "role": "worker"}], {"ok": "true"}, town="sw",
                start=False)
    town = h.town
    dead = _dead_agent(town, "dead")
    t_inflight = town.assign(dead, "was running")
    town.r.lmove(town.keys.inbox(dead), town.keys.inflight(dead), "LEFT", "RIGHT")
    town.r.hset(town.keys.task(t_inflight), "state", "running")
    t_queued = town.assign(dead, "queued")
    q = town.send(dead, "query", question="still there?")
    u = town.send(dead, "task", urgent=True, description="urgent one")
    h.start()
    live = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: town.get_agent(dead)["state"] == "stopped")
    wait_for(lambda: all(town.get_task(t)["state"] == "completed"
                         for t in (t_inflight, t_queued)))
    for t in (t_inflight, t_queued):
        assert town.get_task(t)["assigned_to"] == live
    k = town.keys
    for key in (k.inbox(dead), k.urgent(dead), k.inflight(dead), k.inflight_urgent(dead)):
        assert town.r.llen(key) == 0
    ev = [json.loads(f["data"]) for _i, f in town.r.xrange(k.agent_events(dead))]
    assert any(e["event_type"] == "agent_stopped" and "recovered" in e["message"] for e in ev)
    assert all_records_valid_town(town) == []
    _ = (q, u)


def test_sweeper_without_live_agent_uses_backlog(harness):
    # the only live agent has another role, and claims nothing (backlog claims off)
    h = harness([{"name": "rev", "cli": "ok", "role": "reviewer"}], {"ok": "true"}, town="sw2",
                runtime={"backlog_claim": False}, start=False)
    town = h.town
    dead = _dead_agent(town, "dead", role="worker")
    t1 = town.assign(dead, "one")
    town.r.lmove(town.keys.inbox(dead), town.keys.inflight(dead), "LEFT", "RIGHT")
    t2 = town.assign(dead, "two")
    q = town.send(dead, "query", question="kept")
    h.start()
    wait_for(lambda: town.get_agent(dead)["state"] == "stopped")
    assert sorted(town.backlog_list()) == sorted([t1, t2])
    for t in (t1, t2):
        rec = town.get_task(t)
        assert rec["state"] == "pending" and "assigned_to" not in rec
    kept = [json.loads(x)["id"] for x in town.r.lrange(town.keys.inbox(dead), 0, -1)]
    assert kept == [q]
    assert all_records_valid_town(town) == []


def test_sweeper_leaves_live_and_tt_agents_alone(harness):
    h = harness([{"name": "live", "cli": "ok"}], {"ok": "true"}, town="sw3", start=False)
    town = h.town
    # a tt agent (no tinytownd info) with an old heartbeat: not ours to recover
    tt_aid = "5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    town.r.hset(town.keys.agent(tt_aid), mapping=records.new_agent_hash(
        tt_aid, "ttagent", state="working", now="2020-01-01T00:00:00+00:00"))
    t = town.assign(tt_aid, "tt's work")
    h.start()
    wait_for(lambda: h.rt.workers)
    assert h.rt.sweeper.sweep_once() == []
    assert town.get_agent(tt_aid)["state"] == "working"
    assert town.get_task(t)["state"] == "assigned"


def test_adopt_runs_tt_registered_agents(harness):
    h = harness([], {"claude": "true"}, town="ad", adopt=True, start=False)
    town = h.town
    aid = "6c1d7f8e-2b3c-4d5e-9f01-1b2c3d4e5f60"
    town.r.hset(town.keys.agent(aid), mapping=records.new_agent_hash(aid, "spawned", cli="claude"))
    h.start()
    wait_for(lambda: aid in h.rt.workers)
    tid = town.assign(aid, "adopted work")
    wait_for(lambda: town.get_task(tid)["state"] == "completed")


def test_reload_adds_and_removes_agents(harness, tmpdir_short):
    from tinytownd import config
    h = harness([{"name": "a", "cli": "ok"}], {"ok": "true"}, town="rl")
    wait_for(lambda: len(h.rt.workers) == 1)
    old = h.cfg
    path = write_config(tmpdir_short / "town0", "unix:///unused.sock", agents=[{"name": "b", "cli": "ok"}],
                        clis={"ok": "true"}, town="rl")
    new = config.load(str(path), env={}, check_files=False)
    import dataclasses
    new = dataclasses.replace(new, redis=old.redis)
    h.ctx.config = new
    notes = h.rt.reload(old, new)
    assert any("removed" in n for n in notes) and any("added" in n for n in notes)
    a, b = h.aid("a"), h.aid("b")
    wait_for(lambda: h.rt.workers[a].greenlet.dead)
    wait_for(lambda: h.town.get_agent(a)["state"] == "stopped")
    tid = h.town.assign(b, "new agent works")
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed")


def test_a_vanished_lease_is_taken_back_not_called_lost(harness):
    """Redis lost the lease (FLUSHALL-like data loss, nobody else involved): the agent keeps
    running under its daemon instead of stopping as if another daemon owned it."""
    h = harness([{"name": "w", "cli": "c"}], {"c": "cat >/dev/null; echo ok"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    k = h.keys
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    h.town.r.delete(k.agent_lease(aid))
    tid = h.town.assign(aid, "after the lease vanished")
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed")
    assert h.town.r.get(k.agent_lease(aid)) == h.rt.owner
    w = h.rt.workers[aid]
    assert not w.lost and not w.greenlet.dead
    h.town.r.delete(k.agent_lease(aid))
    wait_for(lambda: h.town.r.get(k.agent_lease(aid)) == h.rt.owner, 5,
             what="the heartbeat re-takes it")
    assert not w.lost
