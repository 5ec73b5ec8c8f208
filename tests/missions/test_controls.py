"""Control notes (controls.py), through the pure tick."""
from __future__ import annotations

import pytest

from tinytownd.missions.controls import parse_redirect, resolve_agent_ref
from tinytownd.missions.mission import MissionControlMessage
from tinytownd.missions.validate import validate_control
from tests.support.missions import ONE_ITEM, TickSim, agent_record


def test_pause_resume_redirect_notes():
    w1, w2 = agent_record("w1", "worker"), agent_record("w2", "worker", state="working")
    s = TickSim(ONE_ITEM, agents=[w1, w2])
    s.tick()
    (t,) = s.live()
    assert t["assigned_to"] == w1["id"]
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "pause for a while"))
    s.tick()
    assert s.m.state == "blocked" and s.m.blocked_reason.startswith("Paused by conductor")
    assert all(validate_control(c.to_json()) == [] for c in s.controls)
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "pause again"))
    out = s.tick()
    assert any("ignored pause directive" in x for x in out.log)
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "resume"))
    s.tick()
    assert s.m.state == "running"
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "redirect x to w2 wrong agent"))
    out = s.tick()
    assert any("cancelled 1 superseded" in x for x in out.log)
    assert [tid for tid, _ in out.cancel_tasks] == [t["id"]]
    (t2,) = s.live()
    assert t2["assigned_to"] == w2["id"]
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "redirect to nobody"))
    out = s.tick()
    assert any("ignored redirect directive" in x and "unknown agent" in x for x in out.log)


def test_redirect_words():
    assert parse_redirect(["to", "w2", "too", "slow"]) == (None, "w2", "too slow")
    assert parse_redirect(["x", "to", "w2"]) == ("x", "w2", "")
    assert parse_redirect(["x", "w2"]) is None


def test_agent_references():
    a = agent_record("alice", "reviewer", aid="aaaa1111-0000-4000-8000-000000000001")
    b = dict(agent_record("bob", None, aid="bbbb2222-0000-4000-8000-000000000002"),
             nickname="Builder")
    agents = [a, b]
    assert resolve_agent_ref(agents, a["id"].upper()) is a
    assert resolve_agent_ref(agents, "ALICE") is a
    assert resolve_agent_ref(agents, "alice [reviewer]") is a
    assert resolve_agent_ref(agents, "builder") is b
    assert resolve_agent_ref(agents, "builder [bob]") is b
    assert resolve_agent_ref(agents, "bbbb") is b
    assert resolve_agent_ref(agents, "bbb") is None
    assert resolve_agent_ref(agents, "conductor") is None
    with pytest.raises(LookupError, match="ambiguous"):
        resolve_agent_ref(agents + [agent_record("alice")], "alice")
