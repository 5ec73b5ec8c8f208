"""The pure tick (scheduler.py): plain data in, writes out (no Redis)."""
from __future__ import annotations

from datetime import timedelta

from tinytownd.missions.mission import MissionControlMessage
from tinytownd.missions.scheduler import topo_depth
from tinytownd.missions.work import task_binding
from tests.support.missions import DIAMOND_ORDER, ONE_ITEM, TickSim, agent_record


def test_diamond_in_dependency_order_with_parallel_limit():
    s = TickSim()
    order = []
    for _ in range(30):
        s.tick()
        live = s.live()
        assert len(live) <= 2
        for t in live:
            wid = task_binding(t["tags"])[1]
            order.append(s.fid[wid])
            s.finish(t["id"])
        if s.m.state == "completed":
            break
    assert s.m.state == "completed"
    pos = {x: order.index(x) for x in order}
    assert sorted(order) == list("abcdef")
    for x, deps in DIAMOND_ORDER.items():
        assert all(pos[d] < pos[x] for d in deps)


def test_failed_task_retried_then_blocked_and_escalated():
    s = TickSim("""
policy: {reviewer_required: false, max_attempts: 2}
work_items: [{id: only, title: Only}]
""")
    s.tick()
    (t,) = s.live()
    s.finish(t["id"], "failed", "boom")
    out = s.tick()          # retry: released and reassigned
    assert any("failed (attempt 1/2)" in x for x in out.log)
    (t2,) = s.live()
    assert t2["id"] != t["id"]
    s.finish(t2["id"], "failed", "boom again")
    out = s.tick()
    it = next(iter(s.items.values()))
    assert it.status == "blocked" and not s.live()
    assert out.help_question and out.help_question.startswith(
        f"[Mission Help Needed] Mission {s.m.id}")
    assert "boom again" in out.help_question
    out = s.tick()          # backoff: no repeat with the same reason
    assert out.help_question is None
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "retry please"))
    out = s.tick()
    assert len(s.live()) == 1 and it.status == "assigned"


def test_ready_order_is_topological_then_created():
    s = TickSim()
    d = topo_depth(s.items)
    assert sorted(d[s.c.file_ids[x]] for x in "abcdef") == [0, 1, 1, 1, 2, 3]


def test_help_when_stalled_without_agents_and_backoff():
    s = TickSim(ONE_ITEM, agents=[agent_record("w1", "worker", state="working")])
    out = s.tick()
    assert out.help_question is None and out.waiting_for_agent    # normal backpressure at first
    s.now += timedelta(seconds=200)
    out = s.tick()
    assert out.help_question and "1 ready work item(s) but no idle agents" in out.help_question
    assert s.m.dispatcher_help_request_attempts == 1
    s.now += timedelta(seconds=60)
    assert s.tick().help_question is None                          # backoff
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "pause"))
    s.now += timedelta(days=1)
    assert s.tick().help_question is None and s.m.state == "blocked"   # paused: no help


def test_dead_assignee_task_cancelled_and_item_released():
    w1, w2 = agent_record("w1", "worker"), agent_record("w2", "worker")
    s = TickSim(ONE_ITEM, agents=[w1, w2])
    s.tick()
    (t,) = s.live()
    dead = next(a for a in s.agents if a["id"] == t["assigned_to"])
    dead["state"] = "stopped"
    out = s.tick()
    assert [tid for tid, _ in out.cancel_tasks] == [t["id"]]
    assert t["id"] not in s.tasks                  # cancelled and dropped from the index
    (t2,) = s.live()                               # released and reassigned in the same tick
    assert t2["assigned_to"] != dead["id"]


def test_completion_while_paused_is_reconciled_after_resume():
    s = TickSim("""
policy: {reviewer_required: false}
work_items: [{id: x, title: X}, {id: y, title: Y, depends_on: [x]}]
""")
    s.tick()
    (t,) = s.live()
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "hold on"))
    s.tick()
    assert s.m.state == "blocked"
    s.finish(t["id"], result="https://github.com/o/r/pull/1")
    out = s.tick()
    assert not out.new_tasks and not s.watches and t["id"] in s.tasks   # nothing while paused
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "resume"))
    s.tick()
    assert s.m.state == "running" and len(s.watches) == 4               # PR watches after resume
    assert t["id"] not in s.tasks
