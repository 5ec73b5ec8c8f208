"""Town store operations: tt-compatible records, idempotent registration, queue semantics."""
import json

import pytest

from tests.support.records import all_records_valid_town
from tinytownd.store import events, validate
from tinytownd.store import records
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town
from tinytownd.store.wire import SUPERVISOR_ID


@pytest.fixture
def town(redis_server):
    return Town(redis_server.client(), Keys("t1"))


def test_register_is_idempotent_and_valid(town):
    a = town.register_agent("w1", role="worker", cli="sh")
    b = town.register_agent("w1", role="worker", cli="sh")
    assert a == b
    assert len(town.list_agents()) == 1
    rec = town.get_agent(a)
    assert rec["state"] == "starting" and rec["role_id"] == "worker" and rec["cli"] == "sh"
    assert validate.validate_agent(rec) == []
    assert all_records_valid_town(town) == []


def test_register_adopts_tt_agent(town):
    aid = "5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    h = records.new_agent_hash(aid, "legacy", cli="claude", nickname="Walter")
    town.r.hset(town.keys.agent(aid), mapping=h)
    assert town.register_agent("legacy", cli="claude") == aid
    assert len(town.list_agents()) == 1


def test_resolve(town):
    a = town.register_agent("alpha", role="reviewer")
    b = town.register_agent("beta")
    assert town.resolve_agent("alpha") == a
    assert town.resolve_agent("ALPHA") == a
    assert town.resolve_agent(a.upper()) == a
    assert town.resolve_agent("alpha [reviewer]") == a
    assert town.resolve_agent("supervisor") == SUPERVISOR_ID
    with pytest.raises(LookupError, match="unknown agent"):
        town.resolve_agent("gamma")
    with pytest.raises(LookupError, match="unknown agent"):
        town.resolve_agent("5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f")
    # a twin spawned by tt with the same nickname makes the nickname ambiguous
    town.r.hset(town.keys.agent(a), "nickname", "Zed")
    town.r.hset(town.keys.agent(b), "nickname", "Zed")
    with pytest.raises(LookupError, match="ambiguous"):
        town.resolve_agent("zed")


def test_assign_complete_records(town):
    aid = town.register_agent("w")
    tid = town.assign(aid, "do it", tags=["x", "mission:5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"],
                      max_attempts=2)
    t = town.get_task(tid)
    assert t["state"] == "assigned" and t["assigned_to"] == aid
    msg = json.loads(town.r.lindex(town.keys.inbox(aid), 0))
    assert msg["type"] == "task_assign" and msg["task_id"] == tid
    assert town.get_task_meta(tid)["max_attempts"] == "2"
    town.r.hset(town.keys.agent(aid), "current_task", tid)
    sub = town.r.pubsub()
    sub.subscribe(town.keys.notify)
    sub.get_message(timeout=1)
    assert town.complete_task(tid, "ok") is True
    assert town.complete_task(tid, "again") is False
    t = town.get_task(tid)
    assert t["state"] == "completed" and t["result"] == "ok"
    a = town.get_agent(aid)
    assert a["tasks_completed"] == "1" and "current_task" not in a
    note = json.loads(sub.get_message(timeout=2)["data"])
    assert note == {"task": tid, "state": "completed",
                    "mission": "5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"}
    sub.close()
    types = [f["event_type"] for _i, f in town.r.xrange(town.keys.events)]
    assert types == ["agent_spawned", "task_assigned", "task_completed"]
    assert town.r.xlen(town.keys.mission_events_stream("5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f")) == 2
    with pytest.raises(LookupError):
        town.complete_task("5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f")
    assert all_records_valid_town(town) == []


def test_fail_and_existing_task_assign(town):
    aid = town.register_agent("w")
    tid = town.create_task("later", tags=["a"])
    assert town.get_task(tid)["state"] == "pending"
    assert town.assign(aid, task_id=tid) == tid
    assert town.get_task(tid)["state"] == "assigned"
    assert town.fail_task(tid, "boom")
    t = town.get_task(tid)
    assert t["state"] == "failed" and t["result"] == "boom"
    assert town.get_agent(aid)["tasks_completed"] == "0"
    assert all_records_valid_town(town) == []


def test_send_queue_semantics(town):
    aid = town.register_agent("w")
    m1 = town.send(aid, "task", description="one")
    m2 = town.send(aid, "task", description="two")
    m3 = town.send(aid, "query", question="q?", priority="high")
    u1 = town.send(aid, "task", urgent=True, description="u1")
    u2 = town.send(aid, "informational", urgent=True, summary="u2")
    inbox = [json.loads(x)["id"] for x in town.r.lrange(town.keys.inbox(aid), 0, -1)]
    assert inbox == [m3, m1, m2]
    assert [json.loads(x)["id"] for x in town.r.lrange(town.keys.urgent(aid), 0, -1)] == [u2, u1]
    with pytest.raises(ValueError):
        town.send(aid, "bogus")
    assert all_records_valid_town(town) == []


def test_assign_many_and_backlog(town):
    aids = [town.register_agent(f"w{i}") for i in range(3)]
    tids = town.assign_many([{"aid": aids[i % 3], "description": f"t{i}"} for i in range(1000)])
    assert len(set(tids)) == 1000
    assert sum(town.r.llen(town.keys.inbox(a)) for a in aids) == 1000
    b = town.backlog_add("claim me", tags=["review"], max_attempts=5)
    assert town.backlog_list() == [b]
    assert town.get_task(b)["tags"] == '["review"]'
    assert len(town.list_tasks()) == 1001
    assert all_records_valid_town(town) == []


def test_decode_message_poison():
    ok = records.encode_message(records.make_message(SUPERVISOR_ID, "task", description="x"))
    assert records.decode_message(ok)["description"] == "x"
    bad = [
        "not json",
        "[]",
        json.dumps({**json.loads(ok), "type": "weird"}),
        json.dumps({**json.loads(ok), "priority": "meh"}),
        json.dumps({**json.loads(ok), "created_at": "2026-01-01T00:00:00"}),
        json.dumps({k: v for k, v in json.loads(ok).items() if k != "description"}),
        json.dumps({k: v for k, v in json.loads(ok).items() if k != "priority"}),
    ]
    for raw in bad:
        with pytest.raises(records.Poison):
            records.decode_message(raw)
    # tt-readable variants that tinytownd must accept
    plus = json.dumps({**json.loads(ok), "created_at": "2026-03-09T20:03:14.667655123+00:00",
                       "extra": 1})
    assert records.decode_message(plus)["type"] == "task"
    nocid = json.loads(ok)
    del nocid["correlation_id"]
    assert records.decode_message(json.dumps(nocid))


def test_validators_catch_mistakes():
    aid = "5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    h = records.new_agent_hash(aid, "x")
    assert validate.validate_agent(h) == []
    assert validate.validate_agent({**h, "state": "running"})
    assert validate.validate_agent({**h, "created_at": "2026-01-01T00:00:00Z"})
    assert validate.validate_agent({**h, "tasks_completed": "1.0"})
    assert validate.validate_agent({**h, "spawn_mode": "forked_context"})
    t = records.new_task_hash(aid, "d", tags=["a"])
    assert validate.validate_task(t) == []
    assert validate.validate_task({**t, "tags": '["a", "b"]'})
    assert validate.validate_task({**t, "state": "done"})
    assert validate.validate_task({**t, "id": aid.upper()})
    ev = events.agent_state_changed(aid, "idle", "working", "m").fields()
    assert validate.validate_event(ev) == []
    bad = json.loads(ev["data"])
    bad["old_state"] = "idle"
    assert validate.validate_event({**ev, "data": json.dumps(bad)})


def test_scripts_survive_a_script_cache_flush(town):
    aid = town.register_agent("w")
    tid = town.assign(aid, "x")
    town.r.script_flush()
    assert town.complete_task(tid, "ok")
    town.r.script_flush()
    assert town.register_agent("w2") != aid
