"""A task batch on a town, in-process: idempotent submission, resume, withdraw, summary rows."""
from __future__ import annotations

import json

import pytest

from tests.support.records import all_records_valid_town
from tinytownd.batch import tasks
from tinytownd.batch.file import parse
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


@pytest.fixture
def town(redis_server):
    return Town(redis_server.client(), Keys("tb"))


def _batch(town, n=5, bid="b1", **task):
    bf = parse({"tasks": [{"id": f"t{i}", "description": f"task {i}", **task}
                          for i in range(n)]}, "b.yaml")
    return tasks.TaskBatch(bf, bid, town.r, town.keys)


def test_submit_writes_each_task_once_in_file_order(town, monkeypatch):
    monkeypatch.setattr(tasks, "SUBMIT_CHUNK", 2)
    r, k = town.r, town.keys
    b = _batch(town, role="reviewer", max_attempts=2, timeout_s=5)
    b.subscribe()
    chunks = []
    assert b.submit(on_chunk=chunks.append) == (5, 0)
    assert [len(c) for c in chunks] == [2, 2, 1]
    tids = [b.ids[f"t{i}"] for i in range(5)]
    assert r.lrange(k.backlog, 0, -1) == tids == r.lrange(k.batch_tasks("b1"), 0, -1)
    assert r.hgetall(k.batch_ids("b1")) == b.ids
    meta = r.hgetall(k.task_meta(tids[0]))
    assert meta == {"batch": "b1", "batch_task": "t0", "max_attempts": "2", "timeout_s": "5.0",
                    "role": "reviewer"}
    task = town.get_task(tids[0])
    assert task["state"] == "pending" and json.loads(task["tags"]) == ["role:reviewer"]
    assert all_records_valid_town(town) == []
    # one backlog wake-up per chunk, naming the batch
    notes: list[dict] = []
    for note in b._notes(2.0, done=lambda: len(notes) >= 3):
        notes.append(note)
    assert [n["task"] for n in notes] == [tids[1], tids[3], tids[4]]
    assert all(n["backlog"] is True and n["batch"] == "b1" for n in notes)
    b.close()
    # submitting again adds nothing; a task hash deleted by hand counts as not submitted
    r.delete(k.task(tids[2]))
    again = _batch(town)
    assert again.submit() == (1, 4)
    assert again.ids["t2"] != tids[2] and again.ids["t0"] == tids[0]


def test_requeue_lost_pushes_pending_tasks_that_are_in_no_queue(town):
    r, k = town.r, town.keys
    b = _batch(town)
    b.submit()
    lost = [b.ids["t1"], b.ids["t3"]]
    for tid in lost:
        r.lrem(k.backlog, 1, tid)
    r.hset(k.task(b.ids["t4"]), "state", "running")
    r.lrem(k.backlog, 1, b.ids["t4"])              # running somewhere: not lost
    resumed = _batch(town)
    assert resumed.start(resume=True) == (0, 5, 2)
    assert r.lrange(k.backlog, 0, -1) == [b.ids["t0"], b.ids["t2"], *lost]
    assert resumed.requeue_lost() == 0


def test_withdraw_takes_unstarted_tasks_out_of_the_backlog(town):
    r, k = town.r, town.keys
    other = town.backlog_add("not the batch's")
    b = _batch(town)
    b.submit()
    r.hset(k.task(b.ids["t0"]), "state", "running")
    assert b.withdraw() == 4
    assert r.lrange(k.backlog, 0, -1) == [other, b.ids["t0"]]
    assert {town.get_task(b.ids[f"t{i}"])["state"] for i in range(1, 5)} == {"pending"}


def test_follow_and_rows(town):
    b = _batch(town, n=3)
    b.subscribe()
    b.submit()
    aid = town.register_agent("w-1")
    t0, t1 = b.ids["t0"], b.ids["t1"]
    town.start_task(t0, aid)
    town.complete_task(t0, "fine")
    town.fail_task(t1, "broken")
    town.r.hset(town.keys.task_meta(t1), mapping={"attempts": "3", "last_error": "broken"})
    town.cancel_task(b.ids["t2"], "enough", pipe=town.r)
    assert b.follow() is True
    c = b.counts()
    assert (c.total, c.completed, c.failed, c.finished) == (3, 1, 2, True)
    rows = {row["id"]: row for row in b.rows()}
    assert rows["t0"]["state"] == "completed" and rows["t0"]["attempts"] == 1
    assert rows["t0"]["agent"] == "w-1" and rows["t0"]["result"] == "fine"
    assert rows["t0"]["duration_s"] is not None and "error" not in rows["t0"]
    assert rows["t1"]["attempts"] == 3 and rows["t1"]["error"] == "broken"
    assert rows["t2"]["state"] == "cancelled"
    b.close()


def test_a_stop_request_ends_the_follow(town):
    from gevent.event import Event

    b = _batch(town, n=2)
    b.submit()
    stop = Event()
    stop.set()
    assert b.follow(stop_event=stop) is False
    assert b.counts().queued == 2
    assert [row["state"] for row in b.rows()] == ["pending", "pending"]
    unsubmitted = _batch(town, n=3, bid="b2")
    assert [row["state"] for row in unsubmitted.rows()] == ["unsubmitted"] * 3


def test_without_the_meta_link_a_task_with_nothing_to_record_has_no_meta(town):
    """An embedded batch whose agents use no worktree (agents.uses_workspaces) leaves the batch
    link to batch:<bid>:ids: a task without limits or a role gets no daemon meta at all (one
    command per task less); one with limits gets just those."""
    bf = parse({"tasks": [{"id": "plain", "description": "x"},
                          {"id": "limited", "description": "y", "max_attempts": 2}]}, "b.yaml")
    b = tasks.TaskBatch(bf, "b2", town.r, town.keys, link_meta=False)
    assert b.submit() == (2, 0)
    assert town.r.exists(town.keys.task_meta(b.ids["plain"])) == 0
    assert town.r.hgetall(town.keys.task_meta(b.ids["limited"])) == {"max_attempts": "2"}
    assert town.r.hgetall(town.keys.batch_ids("b2")) == b.ids


def test_uses_workspaces_follows_the_agents_and_their_clis(tmp_path):
    from tinytownd.batch.agents import uses_workspaces
    from tinytownd.config import from_dict

    def cfg(cli: dict, agent: dict):
        return from_dict({"town": {"name": "w", "root": str(tmp_path)},
                          "agent_clis": {"c": {"command": "true", **cli}},
                          "agents": [{"name": "a", "cli": "c", **agent}]},
                         str(tmp_path / "c.yaml"), env={}, check_files=False)
    ws = {"workspace": {"repo": str(tmp_path)}}
    assert not uses_workspaces(cfg({}, {}))
    assert uses_workspaces(cfg({}, ws)) and uses_workspaces(cfg(ws, {}))
