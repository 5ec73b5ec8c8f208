"""TownRuntime in-process: agents run CLIs for tasks, tt-compatible records, ordering, retries."""
import json
import os
import time

import pytest

from tests.support.runtime import Harness, wait_for, write_config
from tests.support.records import all_records_valid_town
from tinytownd.store import agent_control
from tinytownd.store import records
from tinytownd.store.wire import SUPERVISOR_ID


def task_state(h, tid):
    return (h.town.get_task(tid) or {}).get("state")


@pytest.mark.parametrize("events", ["lifecycle", "terminal", "none"])
def test_assign_runs_cli_and_completes(harness, tmpdir_short, events):
    out = tmpdir_short / "out.txt"
    h = harness([{"name": "w", "cli": "echo", "role": "worker"}],
                {"echo": {"command": f"cat > /dev/null; echo \"$TINYTOWN_TASK_ID $TINYTOWN_AGENT_NAME"
                                     f" $TINYTOWN_TOWN\" >> {out}; echo all done"}},
                runtime={"task_events": events})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    tid = h.town.assign(aid, "say hi")
    wait_for(lambda: task_state(h, tid) == "completed")
    t = h.town.get_task(tid)
    assert t["result"] == "all done"
    assert out.read_text().split() == [tid, "w", "t"]
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    a = h.town.get_agent(aid)
    assert a["tasks_completed"] == "1" and a["rounds_completed"] == "1"
    assert "current_task" not in a
    assert h.town.r.llen(h.keys.inflight(aid)) == 0
    assert all_records_valid_town(h.town) == []
    evs = [json.loads(f["data"]) for _i, f in h.town.r.xrange(h.keys.events)]
    types = {e["event_type"] for e in evs}
    per_task = {"task_assigned", "task_completed"} & types
    working = [e for e in evs if e.get("new_state") == "Working"]
    # runtime.task_events: which of the events tt never writes itself are written
    assert "agent_spawned" in types and "agent_state_changed" in types   # agent start: always
    assert per_task == {"lifecycle": {"task_assigned", "task_completed"},
                        "terminal": {"task_completed"}, "none": set()}[events]
    assert bool(working) == (events == "lifecycle")
    agent_types = {f["event_type"] for _i, f in h.town.r.xrange(h.keys.agent_events(aid))}
    assert ("task_completed" in agent_types) == (events != "none")


def test_tt_written_task_completes(harness):
    """A task hash + message exactly as `tt assign` writes them (9-digit fractions)."""
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "true"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = "0f6c1c9e-5e0b-4c52-9d3e-2f4a8b6c7d10"
    ts = "2026-03-09T20:03:14.667655123"
    h.town.r.hset(h.keys.task(tid), mapping={
        "id": tid, "description": "from tt", "state": "assigned", "created_at": ts + "+00:00",
        "updated_at": ts + "+00:00", "tags": "[]", "assigned_to": aid})
    msg = {"id": "7b1f7c1e-1d3a-4f57-8c7e-7d2a1b0c9e8f", "from": SUPERVISOR_ID, "to": aid,
           "type": "task_assign", "task_id": tid, "priority": "normal",
           "created_at": ts + "Z", "correlation_id": None}
    h.town.r.rpush(h.keys.inbox(aid), json.dumps(msg, separators=(",", ":")))
    wait_for(lambda: task_state(h, tid) == "completed")
    assert h.town.get_task(tid)["result"] == "Completed"


def test_cli_completes_task_itself(harness):
    """`tinytownd task complete` from inside the CLI (env: REDIS_URL, TINYTOWN_TOWN, config)."""
    h = harness([{"name": "w", "cli": "self"}],
                {"self": 'tinytownd task complete "$TINYTOWN_TASK_ID" --result "mine" >/dev/null'
                         ' && echo ignored'})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "x")
    wait_for(lambda: task_state(h, tid) == "completed", timeout=30)
    assert h.town.get_task(tid)["result"] == "mine"
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    assert h.town.get_agent(aid)["tasks_completed"] == "1"


def test_urgent_before_normal_and_fifo(harness, tmpdir_short):
    out = tmpdir_short / "order.txt"
    h = harness([{"name": "w", "cli": "rec"}],
                {"rec": f'echo "$TINYTOWN_TASK_ID" >> {out}'},
                runtime={"heartbeat_interval_s": 0.2})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    agent_control.interrupt(h.town, aid)                    # queue everything while paused
    wait_for(lambda: h.rt.workers[aid].state == "paused")
    normal = [h.town.assign(aid, f"n{i}") for i in range(4)]
    urgent = []
    for i in range(2):
        tid = h.town.create_task(f"u{i}")
        h.town.assign(aid, task_id=tid, pipe=None) if False else None
        h.town.r.hset(h.keys.task(tid), mapping={"state": "assigned", "assigned_to": aid})
        h.town.send(aid, "task_assign", urgent=True, task_id=tid)
        urgent.append(tid)
    agent_control.resume(h.town, aid)
    wait_for(lambda: out.exists() and len(out.read_text().split()) == 6)
    order = out.read_text().split()
    # the urgent list is a stack (newest first), then the inbox in FIFO order
    assert order == [urgent[1], urgent[0]] + normal
    wait_for(lambda: all(task_state(h, t) == "completed" for t in normal + urgent))


def test_retries_then_failed_and_deadletter(harness, tmpdir_short):
    cnt = tmpdir_short / "count"
    h = harness([{"name": "w", "cli": "bad"}],
                {"bad": {"command": f"echo run >> {cnt}; echo oops; exit 3", "max_attempts": 3}},
                runtime={"task_events": "terminal"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "fails")
    wait_for(lambda: task_state(h, tid) == "failed", timeout=30)
    t = h.town.get_task(tid)
    assert "exit status 3" in t["result"] and "oops" in t["result"]
    assert cnt.read_text().count("run") == 3
    dl = [json.loads(x) for x in h.town.r.lrange(h.keys.deadletter, 0, -1)]
    assert len(dl) == 1 and dl[0]["reason"] == "max attempts" and dl[0]["task"] == tid
    assert dl[0]["source"] == h.keys.inbox(aid) and json.loads(dl[0]["raw"])["task_id"] == tid
    assert h.town.get_task_meta(tid)["attempts"] == "3"
    types = [f["event_type"] for _i, f in h.town.r.xrange(h.keys.events)]
    assert "task_failed" in types
    assert h.town.r.zcard(h.keys.delayed) == 0
    # per-task max_attempts overrides the CLI's
    tid2 = h.town.assign(aid, "once", max_attempts=1)
    wait_for(lambda: task_state(h, tid2) == "failed")
    assert cnt.read_text().count("run") == 4
    assert all_records_valid_town(h.town) == []


def test_timeout_kills_process_group(harness, tmpdir_short):
    pidf = tmpdir_short / "child.pid"
    h = harness([{"name": "w", "cli": "slow"}],
                {"slow": {"command": f"sh -c 'sleep 300 & echo $! > {pidf}; wait' ; sleep 300",
                          "timeout_s": 0.5, "max_attempts": 1}})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "hang")
    wait_for(lambda: task_state(h, tid) == "failed", timeout=30)
    assert "timed out" in h.town.get_task(tid)["result"]
    grandchild = int(pidf.read_text())

    def gone():
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return True
        # a zombie reparented to init also counts as killed
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                return f.read().split()[2] == "Z"
        except OSError:
            return True
    wait_for(gone, timeout=10, what="grandchild killed")


def test_poison_deadlettered_good_ones_run(harness):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    agent_control.interrupt(h.town, aid)
    wait_for(lambda: h.rt.workers[aid].state == "paused")
    good = records.make_message(aid, "task", description="x")
    bad = ["{not json", json.dumps({**good, "type": "weird"}),
           json.dumps({**good, "created_at": "2026-01-01T00:00:00"}),
           json.dumps({k: v for k, v in good.items() if k != "description"})]
    tids = []
    for i, raw in enumerate(bad):
        h.town.r.rpush(h.keys.inbox(aid), raw)
        tids.append(h.town.assign(aid, f"good{i}"))
    h.town.r.lpush(h.keys.urgent(aid), "urgent garbage")
    agent_control.resume(h.town, aid)
    wait_for(lambda: all(task_state(h, t) == "completed" for t in tids))
    dl = [json.loads(x) for x in h.town.r.lrange(h.keys.deadletter, 0, -1)]
    assert sorted(d["raw"] for d in dl) == sorted(bad + ["urgent garbage"])
    assert {d["source"] for d in dl} == {h.keys.inbox(aid), h.keys.urgent(aid)}
    reasons = " ".join(d["reason"] for d in dl)
    for word in ("bad JSON", "unknown message type", "created_at", "description"):
        assert word in reasons
    assert h.town.r.llen(h.keys.inflight(aid)) == 0


def test_heartbeat_during_long_round(harness):
    h = harness([{"name": "w", "cli": "long"}], {"long": "sleep 1.5"},
                runtime={"heartbeat_interval_s": 0.1, "stale_after_s": 1.0, "lease_ttl_s": 1.0})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "long")
    wait_for(lambda: h.town.get_agent(aid)["state"] == "working")
    beats = set()
    while task_state(h, tid) != "completed":
        a = h.town.get_agent(aid)
        if a["state"] == "working":
            beats.add(a["last_heartbeat"])
        time.sleep(0.05)
    assert len(beats) >= 5   # heartbeats kept coming while the CLI ran
    assert h.town.r.get(h.keys.agent_lease(aid))   # lease held throughout


def test_interrupt_resume_close_kill(harness, tmpdir_short):
    h = harness([{"name": "w", "cli": "s"}], {"s": "sleep 0.3"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    # interrupt: paused, no new work taken
    agent_control.interrupt(h.town, aid)
    tid = h.town.assign(aid, "while paused")
    time.sleep(0.5)
    assert task_state(h, tid) == "assigned" and h.town.get_agent(aid)["state"] == "paused"
    # resume: idle, work runs
    agent_control.resume(h.town, aid)
    wait_for(lambda: task_state(h, tid) == "completed")
    # close during a round: the round finishes, then stopped
    tid2 = h.town.assign(aid, "finish me")
    wait_for(lambda: h.town.get_agent(aid)["state"] == "working")
    agent_control.close(h.town, aid)
    wait_for(lambda: task_state(h, tid2) == "completed")
    wait_for(lambda: h.town.get_agent(aid)["state"] == "stopped")
    wait_for(lambda: h.rt.workers[aid].greenlet.dead)
    assert not h.town.r.exists(h.keys.stop(aid))
    assert not h.town.r.exists(h.keys.agent_lease(aid))
    # a stopped agent stays stopped; resume runs it again
    tid3 = h.town.assign(aid, "after close")
    time.sleep(0.6)
    assert task_state(h, tid3) == "assigned"
    agent_control.resume(h.town, aid)
    wait_for(lambda: task_state(h, tid3) == "completed")


def test_kill_stops_running_cli_and_requeues(harness, tmpdir_short):
    h = harness([{"name": "w", "cli": "s"}], {"s": "sleep 30"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    tid = h.town.assign(aid, "long")
    wait_for(lambda: h.rt.workers[aid].pid)
    pid = h.rt.workers[aid].pid
    agent_control.kill(h.town, aid)
    wait_for(lambda: h.rt.workers[aid].greenlet.dead, timeout=10)
    assert h.town.get_agent(aid)["state"] == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # the task went back to the inbox, not lost
    assert task_state(h, tid) == "assigned"
    inbox = [json.loads(x) for x in h.town.r.lrange(h.keys.inbox(aid), 0, -1)]
    assert [m["task_id"] for m in inbox] == [tid]
    assert h.town.get_task_meta(tid).get("attempts") == "0"


def test_backlog_claims_by_role_and_tags(harness):
    h = harness([{"name": "rev", "cli": "ok", "role": "reviewer"},
                 {"name": "wk", "cli": "ok", "role": "worker", "tags": ["docs"]}],
                {"ok": "true"})
    wait_for(lambda: len(h.rt.workers) == 2)
    rev, wk = h.aid("rev"), h.aid("wk")
    wait_for(lambda: all(w.idle for w in h.rt.workers.values()))
    t1 = h.town.backlog_add("review it", tags=["reviewer"])
    t2 = h.town.backlog_add("write docs", tags=["docs"])
    t3 = h.town.backlog_add("anyone")
    t4 = h.town.backlog_add("nobody", tags=["gpu"])
    wait_for(lambda: all(task_state(h, t) == "completed" for t in (t1, t2, t3)))
    assert h.town.get_task(t1)["assigned_to"] == rev
    assert h.town.get_task(t2)["assigned_to"] == wk
    assert h.town.backlog_list() == [t4]
    # tt's `backlog add` (no notify) is noticed by the LLEN poll
    t5 = h.town.create_task("tt added")
    h.town.r.rpush(h.keys.backlog, t5)
    wait_for(lambda: task_state(h, t5) == "completed")


def test_parked_agents_are_woken(harness, tmpdir_short):
    """Idle agents park in BLMOVE for a heartbeat interval; urgent mail, pause and close wake them
    (a `ping` at the inbox head), and the ping is consumed, not left behind."""
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "true"},
                runtime={"heartbeat_interval_s": 2.0, "lease_ttl_s": 10.0, "stale_after_s": 10.0,
                         "block_timeout_s": 0.05})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    from tinytownd.runtime.worker import idle_park_s
    assert idle_park_s(h.rt.cfg) == 2.0
    assert 1.6 <= idle_park_s(h.rt.cfg, 0.999) < 2.0   # jittered shorter, never longer
    wait_for(lambda: h.rt.workers[aid].idle)
    # normal mail wakes the BLMOVE itself
    t0 = time.monotonic()
    tid = h.town.assign(aid, "normal")
    wait_for(lambda: task_state(h, tid) == "completed")
    assert time.monotonic() - t0 < 1.5
    # urgent mail is noticed by the heartbeat pass (at most one interval)
    wait_for(lambda: h.rt.workers[aid].idle)
    utid = h.town.create_task("urgent")
    h.town.r.hset(h.keys.task(utid), mapping={"state": "assigned", "assigned_to": aid})
    h.town.send(aid, "task_assign", urgent=True, task_id=utid)
    wait_for(lambda: task_state(h, utid) == "completed", timeout=6)
    # close while parked: stopped within about one interval
    wait_for(lambda: h.rt.workers[aid].idle)
    agent_control.close(h.town, aid)
    wait_for(lambda: h.town.get_agent(aid)["state"] == "stopped", timeout=6)
    inbox = [json.loads(x)["type"] for x in h.town.r.lrange(h.keys.inbox(aid), 0, -1)]
    assert inbox in ([], ["ping"])      # a ping pushed for the stop may stay for the next start
    agent_control.resume(h.town, aid)
    wait_for(lambda: not h.rt.workers[aid].greenlet.dead and h.rt.workers[aid].idle, timeout=6)
    wait_for(lambda: h.town.r.llen(h.keys.inbox(aid)) == 0, timeout=6)


def test_paused_agent_stays_paused_across_restart(redis_server, tmpdir_short):
    root = tmpdir_short / "town"
    root.mkdir()
    cfg = write_config(root, redis_server.url, agents=[{"name": "w", "cli": "ok"}],
                       clis={"ok": "true"})
    h = Harness(cfg).start()
    try:
        aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
        wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
        agent_control.interrupt(h.town, aid)
        wait_for(lambda: h.rt.workers[aid].state == "paused")
    finally:
        h.crash()
    h2 = Harness(cfg).start()
    try:
        wait_for(lambda: aid in h2.rt.workers and h2.rt.workers[aid].state == "paused")
        tid = h2.town.assign(aid, "waits")
        time.sleep(0.4)
        assert task_state(h2, tid) == "assigned"
        agent_control.resume(h2.town, aid)
        wait_for(lambda: task_state(h2, tid) == "completed")
    finally:
        h2.stop()


def test_idle_timeout_drains_then_stops(harness):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "true"},
                runtime={"idle_timeout_s": 0.5})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "stopped", timeout=10)
    wait_for(lambda: h.rt.workers[aid].greenlet.dead)
    states = [json.loads(f["data"]).get("new_state")
              for _i, f in h.town.r.xrange(h.keys.agent_events(aid))]
    assert states.index("Draining") < states.index("Stopped")


def test_next_round_taken_with_round_end_goes_back_on_stop(harness, tmpdir_short):
    """round_ok_take ends a round and takes the next one atomically; if a stop arrives before the
    worker uses that take, the taken messages go back to the queue heads, order kept."""
    from tinytownd.runtime.settings import AgentSettings
    from tinytownd.runtime.worker import Worker

    h = harness([], {"ok": "true"})
    rt, k = h.rt, h.keys
    aid = h.town.register_agent("x", cli="ok")
    assert rt.leases.acquire(aid)
    w = Worker(rt.links, AgentSettings(name="x", aid=aid, role="worker", cli="ok",
                                       command="true", timeout_s=None, max_attempts=3,
                                       workdir=str(tmpdir_short)))
    w.take_keys = [k.urgent(aid), k.inbox(aid), k.inflight_urgent(aid), k.inflight(aid),
                   k.stop(aid), k.agent(aid), k.agent_lease(aid), k.deadletter]
    t1 = h.town.assign(aid, "first")
    t2 = h.town.assign(aid, "second")
    note = h.town.send(aid, "informational", urgent=True, summary="hello")
    before_inbox = h.town.r.lrange(k.inbox(aid), 0, -1)
    before_urgent = h.town.r.lrange(k.urgent(aid), 0, -1)
    # the round end of an (empty) round plus the next take, as the worker sends it
    ok_keys = [k.agent(aid), k.inflight_urgent(aid), k.inflight(aid), k.urgent(aid), k.inbox(aid),
               k.agent_lease(aid), k.delayed, k.agent(aid), k.agent_info(aid), k.activity(aid),
               k.events, k.agent_events(aid)]
    ok_args = [k.prefix, "2026-01-01T00:00:00+00:00", "done", "", "", "", "", "", k.notify, "",
               "{}", "Round 1: ok", rt.owner, 1000, 100, 500, "", "1", "0", "1"]
    fin, pre = rt.scripts.round_ok_take(
        keys=ok_keys + w.take_keys,
        args=[len(ok_keys), len(ok_args), *ok_args, *w.take_args()])
    assert int(fin[0]) == -2 and int(fin[4]) == 1          # no task; acked under our lease
    assert pre[0] == "ok" and int(pre[1]) == 1             # the urgent note...
    assert len(pre[2]) == 2 and json.loads(pre[2][1])["task_id"] == t1   # ...and the first task
    assert pre[3][0] == "task_assign" and pre[3][1] == t1  # with its task hash
    assert json.loads(pre[2][0])["id"] == note
    assert h.town.r.llen(k.inbox(aid)) == 1               # t2 still queued
    w.next_take = pre
    w.stop_requested = True
    w.log = rt.log
    w._drop_next_take()
    assert w.next_take is None
    assert h.town.r.llen(k.inflight(aid)) == 0 and h.town.r.llen(k.inflight_urgent(aid)) == 0
    assert h.town.r.lrange(k.inbox(aid), 0, -1) == before_inbox
    assert h.town.r.lrange(k.urgent(aid), 0, -1) == before_urgent
    assert [json.loads(m)["task_id"] for m in before_inbox] == [t1, t2]
    # the take had started t1's round (task running, attempt 1): taken back with the messages
    assert pre[3][4] == 1 and task_state(h, t1) == "assigned"
    assert h.town.r.hget(k.task_meta(t1), "attempts") == "0"
    assert h.town.get_agent(aid).get("current_task") is None


def test_kept_connections_survive_killed_clients_and_flushed_scripts(harness):
    """The runtime's scripts run on connections kept out of the pool: when Redis drops every
    client and forgets its scripts (as after a restart), rounds go on."""
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "true"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    first = h.town.assign(aid, "before")
    wait_for(lambda: task_state(h, first) == "completed")
    assert h.rt.scripts._free or not h.rt.scripts.keep      # the fast path was used
    r = h.town.r
    r.script_flush()
    r.client_kill_filter(_type="normal", skipme=True)
    tids = [h.town.assign(aid, f"after {i}") for i in range(3)]
    wait_for(lambda: all(task_state(h, t) == "completed" for t in tids), timeout=20)
