"""A new primary (a Sentinel failover) is a crash of every worker's view of Redis: what a worker
moved in flight just before may sit in the new primary's in-flight list with no round behind it
(the take reached the new primary, the ack the old one). The runtime's `primary_changed` (called
by the daemon's primary watch) makes every worker start over from what the primary holds, as a
restart after a crash does: in-flight messages back to the queue heads, the agent's state read
again. tests/ha/test_failover_load.py runs the real thing; this is the rule on its own."""
from tests.support.runtime import wait_for


def test_a_message_stranded_in_flight_runs_after_a_primary_change(harness):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; echo done"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    w = h.rt.workers[aid]
    wait_for(lambda: w.idle, what="the agent parked")
    k = h.keys
    # what a split brain leaves behind: the task and its task_assign, in flight, no round
    tid, cmds = h.town._assign_cmds(aid, "stranded", (), None, False, None, None, None,
                                    "2026-12-03T00:00:00+00:00", ())
    for c in cmds:
        if c[0] == "RPUSH" and c[1] == k.inbox(aid):
            c = ("RPUSH", k.inflight(aid), *c[2:])
        h.town.r.execute_command(*c)
    h.town.r.hset(k.agent(aid), mapping={"state": "working", "current_task": tid})
    assert h.town.r.llen(k.inflight(aid)) == 1 and h.town.r.llen(k.inbox(aid)) == 0
    h.rt.primary_changed()
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 15,
             what="the stranded task run after the change")
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle", what="the agent idle again")
    assert h.town.r.llen(k.inflight(aid)) == 0
    assert w.greenlet is not None and not w.greenlet.dead


def test_a_round_running_at_the_change_ends_before_the_worker_starts_over(harness, tmp_path):
    marks = tmp_path / "runs"
    h = harness([{"name": "w", "cli": "slow"}],
                {"slow": f"cat >/dev/null; echo x >> {marks}; sleep 0.6; echo done"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    tid = h.town.assign(aid, "long")
    wait_for(lambda: marks.exists(), what="the round started")
    h.rt.primary_changed()
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 15)
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    assert marks.read_text().count("x") == 1        # the round was not cut short nor rerun
    assert h.town.r.llen(h.keys.inflight(aid)) == 0
