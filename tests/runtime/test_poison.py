"""Nothing stuck behind bad input: whatever a client writes into a key the runtime reads goes to
the dead-letter list with its reason and source, and the work behind it goes on."""
import base64
import json

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import RedisServer, short_tmpdir
from tests.support.runtime import Harness, wait_for, write_config
from tinytownd.store import records


def raw_client(h) -> redis.Redis:
    """A client that writes bytes as they are (no encoding)."""
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(h.clients.url))


def dead(h) -> list[dict]:
    return [json.loads(x) for x in h.town.r.lrange(h.keys.deadletter, 0, -1)]


def raw_of(entry: dict) -> bytes:
    if "raw" in entry:
        return entry["raw"].encode()
    return base64.b64decode(entry["raw_base64"])


def one_agent(harness, **kw):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; echo done"}, **kw)
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    return h, aid


def completes(h, aid, what="a task after the bad input"):
    tid = h.town.assign(aid, "after")
    wait_for(lambda: (h.town.get_task(tid) or {}).get("state") == "completed", 15, what=what)
    assert h.rt.workers[aid].greenlet is not None and not h.rt.workers[aid].greenlet.dead
    assert h.town.get_agent(aid)["state"] != "stopped"


def test_invalid_utf8_deep_nesting_and_oversize_messages(harness):
    h, aid = one_agent(harness)
    rb = raw_client(h)
    k = h.keys
    bad = [(k.inbox(aid), b'{"id": "\xff\xfe", "type": "task"}', "not UTF-8"),
           (k.urgent(aid), b"[" * 100_000 + b"]" * 100_000, "JSON nested too deep"),
           (k.inbox(aid), b"x" * (records.MESSAGE_MAX_BYTES + 10), "message over")]
    for key, raw, _why in bad:
        rb.rpush(key, raw)
    completes(h, aid)
    entries = dead(h)
    for key, raw, why in bad:
        e = next(e for e in entries if why in e["reason"])
        assert e["source"] == key and e["raw_size"] == len(raw)
        assert raw.startswith(raw_of(e))
    assert h.town.r.llen(k.inflight(aid)) == 0 and h.town.r.llen(k.inbox(aid)) == 0


def test_backlog_wrong_type_and_junk_entries_do_not_block_claims(harness):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; true"})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    r, k = h.town.r, h.keys
    broken = records.new_id()
    r.set(k.task(broken), "a string, not a task hash")
    r.rpush(k.backlog, broken, *[f"junk-{i}" for i in range(150)], records.new_id())
    tid = h.town.backlog_add("real work")
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 20, what="backlog task")
    reasons = [e["reason"] for e in dead(h)]
    assert "task key is not a hash" in reasons
    assert reasons.count("backlog entry is not a task id (UUID)") == 150
    assert "no such task" in reasons
    assert r.llen(k.backlog) == 0
    assert not any(g.dead for g in h.greenlets)          # no service died on the way


def test_a_wrong_typed_backlog_repaired_before_the_claims_look_stops_nothing(harness,
                                                                             monkeypatch):
    """The client that wrote a string over the backlog puts the list back just as the claims
    service goes to move it away: nothing is left to move, and the service goes on (it used to
    raise the WRONGTYPE and be restarted — the fault suite's poison-backlog crash)."""
    from tinytownd.runtime.backlog import BacklogClaims
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; true"}, start=False)
    looked = []
    real = BacklogClaims._quarantine

    def repaired_first(self):
        h.town.r.delete(h.keys.backlog)
        looked.append(True)
        return real(self)
    monkeypatch.setattr(BacklogClaims, "_quarantine", repaired_first)
    h.start()
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    for _ in range(2):                                  # twice in a row: still a race
        n = len(looked)
        h.town.r.set(h.keys.backlog, "a string, not a list")
        wait_for(lambda: len(looked) > n, 10, what="the claims meeting WRONGTYPE")
    tid = h.town.backlog_add("after the repair")
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 15, what="backlog task")
    assert not any(g.dead for g in h.greenlets)
    assert h.town.r.llen(h.keys.deadletter) == 0        # the repaired list was not moved


def test_task_key_of_wrong_type_is_quarantined(harness):
    h, aid = one_agent(harness)
    r, k = h.town.r, h.keys
    tid = records.new_id()
    r.rpush(k.task(tid), "a list where a task hash belongs")
    r.rpush(k.inbox(aid), records.task_assign_json(aid, tid))
    completes(h, aid)
    reasons = {e["reason"]: e for e in dead(h)}
    assert reasons["key holds a list, not a hash"]["source"] == k.task(tid)
    assert reasons["unknown task"]["task"] == tid
    assert not r.exists(k.task(tid))


def test_inbox_of_wrong_type_is_quarantined(harness):
    h, aid = one_agent(harness)
    r, k = h.town.r, h.keys
    r.delete(k.inbox(aid))
    r.set(k.inbox(aid), "not a list")
    h.rt.agents.wake([h.rt.workers[aid]])     # (the parked BLMOVE meets it at once)
    wait_for(lambda: r.type(k.inbox(aid)) in ("none", "list"), 10, what="inbox quarantined")
    completes(h, aid)
    e = next(e for e in dead(h) if e["source"] == k.inbox(aid))
    assert e["reason"] == "key holds a string, not a list" and e["raw"] == "not a list"


def test_delayed_envelopes_that_cannot_be_delivered(harness):
    h, aid = one_agent(harness)
    r, k = h.town.r, h.keys
    r.set(k.inbox("x"), "str")
    envs = {"not json": "unreadable delayed envelope",
            json.dumps({"key": k.inbox("x"), "raw": "m"}): "its list is not a list",
            json.dumps({"key": "elsewhere", "raw": "m"}): "not an inbox or urgent list"}
    for env in envs:
        r.zadd(k.delayed, {env: 0})
    wait_for(lambda: r.zcard(k.delayed) == 0, 10, what="delayed zset drained")
    got = dead(h)
    for env, why in envs.items():
        assert any(why in e["reason"] and raw_of(e) == env.encode() for e in got), why
    assert r.get("elsewhere") is None
    completes(h, aid)


def test_a_round_that_kills_the_worker_is_dead_lettered_after_three_crashes(harness, monkeypatch):
    from tinytownd.runtime import round as round_mod

    real = round_mod.Round._run_cli

    def crash_on_poison(self, meta):
        if (self.task or {}).get("description") == "poison":
            raise TypeError("a bug that this input triggers")
        return real(self, meta)

    monkeypatch.setattr(round_mod.Round, "_run_cli", crash_on_poison)
    h, aid = one_agent(harness)
    bad = h.town.assign(aid, "poison")
    wait_for(lambda: h.town.get_task(bad)["state"] == "failed", 30, what="poison task failed")
    assert "crashed 3 times" in h.town.get_task(bad)["result"]
    assert any("crashed 3 times" in e["reason"] for e in dead(h))
    completes(h, aid)


@pytest.fixture(scope="module")
def shared_agent():
    """One runtime for all generated examples (a fresh one per example would cost seconds)."""
    with short_tmpdir() as d:
        srv = RedisServer(d / "redis").start()
        h = Harness(write_config(d, srv.url, agents=[{"name": "w", "cli": "ok"}],
                                 clis={"ok": "cat >/dev/null; echo done"})).start()
        try:
            aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
            yield h, aid
        finally:
            h.stop()
            srv.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.binary(max_size=300),
                          st.text(max_size=200).map(str.encode),
                          st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                                       lambda c: st.lists(c, max_size=4)
                                       | st.dictionaries(st.text(max_size=8), c, max_size=4),
                                       max_leaves=20).map(lambda v: json.dumps(v).encode()),
                          st.builds(lambda t, tid: json.dumps(
                              {"id": records.new_id(), "from": records.SUPERVISOR_ID,
                               "to": records.SUPERVISOR_ID, "type": t, "task_id": tid,
                               "priority": "normal", "created_at": "2026-01-01T00:00:00Z",
                               "correlation_id": None}).encode(),
                              st.sampled_from(["task_assign", "task", "query", "custom", "ping"]),
                              st.one_of(st.text(max_size=40), st.integers(), st.none()))),
                min_size=1, max_size=5))
def test_generated_garbage_in_the_queues(shared_agent, garbage):
    h, aid = shared_agent
    rb = raw_client(h)
    for i, raw in enumerate(garbage):
        rb.rpush(h.keys.urgent(aid) if i % 2 else h.keys.inbox(aid), raw)
    completes(h, aid, what="a task after generated input")
    wait_for(lambda: h.town.r.llen(h.keys.inbox(aid)) == 0 and
             h.town.r.llen(h.keys.urgent(aid)) == 0, 15, what="queues drained")


def test_agent_records_of_the_wrong_type(harness):
    """A string where the name registry or an agent hash belongs does not stop registration."""
    h = harness([], {"ok": "true"})
    r, k = h.town.r, h.keys
    r.set(k.agent_names, "not a hash")
    r.set(k.agent("00000000-0000-4000-8000-000000000042"), "not an agent")
    h2 = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; echo done"},
                 root_name="second")
    aid = wait_for(lambda: h2.rt.workers and next(iter(h2.rt.workers)), 15)
    completes(h2, aid)
    sources = {e["source"] for e in dead(h2)}
    assert {k.agent_names, k.agent("00000000-0000-4000-8000-000000000042")} <= sources


def test_junk_on_the_notify_channel(harness):
    h = harness([{"name": "w", "cli": "ok"}], {"ok": "cat >/dev/null; true"})
    wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    rb = raw_client(h)
    k = h.keys
    # a PUBLISH before the runtime's listener subscribed reaches nobody: wait for it first
    wait_for(lambda: dict(rb.pubsub_numsub(k.notify)).get(k.notify.encode(), 0) >= 1, 10,
             what="the runtime's notify listener subscribed")
    junk = [b"\xff\xfe", b"[" * 50_000, b'{"task": ["not", "a", "string"]}', b'"just text"',
            b'{"state": "completed"}']
    for raw in junk:
        rb.publish(k.notify, raw)
    tid = h.town.backlog_add("after the junk")
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 15, what="backlog task")
    wait_for(lambda: sum(e["source"] == k.notify for e in dead(h)) == len(junk), 10,
             what="every junk note dead-lettered")
    assert not any(g.dead for g in h.greenlets)


def test_event_streams_of_the_wrong_type(harness):
    # (with the per-task events on: every round writes both streams)
    h, aid = one_agent(harness, runtime={"task_events": "lifecycle"})
    r, k = h.town.r, h.keys
    for key in (k.events, k.agent_events(aid)):
        r.delete(key)
        r.sadd(key, "a set, not a stream")
    completes(h, aid)
    assert {k.events, k.agent_events(aid)} <= {e["source"] for e in dead(h)}
    assert not any(g.dead for g in h.greenlets) and h.rt.workers[aid].crashes == 0
