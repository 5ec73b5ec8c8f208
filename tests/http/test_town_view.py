"""The town view's two depths against a real redis-server: the counts view reads only what is
counted, the full view every field the dashboard shows (sorted by name), a fresh full view
answers a counts request without a read, and junk in the names hash or an agent key is skipped."""
import pytest

import redis

from tinytownd.daemon.redis_clients import make_pool
from tinytownd.http import town_view
from tinytownd.store import records
from tinytownd.store.keys import Keys


@pytest.fixture
def town(redis_server):
    c = redis.Redis(connection_pool=make_pool(redis_server.url, max_connections=4,
                                              blocking=False))
    k = Keys("tv")
    for i, name in enumerate(["zed", "amy", "bob"]):
        aid = f"00000000-0000-4000-8000-{i:012d}"
        c.hset(k.agent(aid), mapping=records.new_agent_hash(aid, name, role="worker", cli="t"))
        c.hset(k.agent_names, name, aid)
    c.rpush(k.inbox("00000000-0000-4000-8000-000000000001"),
            '{"type":"task_assign","task_id":"x"}', '{"type":"ping"}')
    c.set(k.agent("junk"), "not a hash")
    c.hset(k.agent_names, "junk", "junk")
    yield c, k
    c.close()


def test_counts_view_reads_only_the_counted_fields(town):
    c, k = town
    view = town_view.TownView(lambda: c, k).get(2.0, town_view.COUNT_FIELDS)
    assert len(view["agents"]) == 3                       # the junk key is skipped
    for a in view["agents"]:
        assert set(a) == {*town_view.COUNT_FIELDS, "inbox", "urgent", "assigned_pending"}
        assert a["state"] == "starting" and a["cli"] == "t"
    busy = [a for a in view["agents"] if a["inbox"]]
    assert [(a["inbox"], a["assigned_pending"]) for a in busy] == [(2, 1)]


def test_full_view_is_sorted_and_answers_counts_while_fresh(town, monkeypatch):
    c, k = town
    tv = town_view.TownView(lambda: c, k)
    full = tv.get(2.0)
    assert [a["name"] for a in full["agents"]] == ["amy", "bob", "zed"]
    assert all(a["role_id"] == "worker" for a in full["agents"])
    reads = []
    monkeypatch.setattr(tv, "_read", lambda *a: reads.append(a) or {"agents": []})
    assert tv.get(2.0, town_view.COUNT_FIELDS) is full     # no second read within the TTL
    assert reads == []
    tv._views.clear()
    tv.get(2.0, town_view.COUNT_FIELDS)
    assert len(reads) == 1


def test_names_hash_of_the_wrong_type_falls_back_to_the_key_scan(town):
    c, k = town
    c.delete(k.agent_names)
    c.set(k.agent_names, "junk")
    view = town_view.TownView(lambda: c, k).get(2.0, town_view.COUNT_FIELDS)
    assert len(view["agents"]) == 3


def test_key_scan_reads_task_states_and_batches_and_skips_junk(town):
    """More tasks than one pipeline chunk, a task key that is no hash (its HGET is an error
    reply, skipped), a batch whose task list is no list (no tasks, not an error)."""
    c, k = town
    n = town_view.PIPE_CHUNK + 7
    p = c.pipeline(transaction=False)
    for i in range(n):
        p.hset(k.task(f"t{i}"), mapping={"state": "running" if i % 2 else "completed"})
    p.rpush(k.batch_tasks("b1"), "t0", "t1")
    p.set(k.daemon_prefix + "batch:b1", "x")
    p.set(k.daemon_prefix + "batch:b2", "x")
    p.set(k.batch_tasks("b2"), "not a list")
    p.set(k.task("junk"), "not a hash")
    p.execute()
    scan = town_view.scan_town(c, k)
    assert len(scan.task_states) == n and "junk" not in scan.task_states
    assert scan.task_states["t0"] == "completed" and scan.task_states["t1"] == "running"
    assert sorted(scan.batch_ids) == ["b1", "b2"]
    assert scan.batch_tasks == {"b1": ["t0", "t1"], "b2": []}
    assert scan.error is None and scan.scan_ms is not None
