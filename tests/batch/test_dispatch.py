"""The embedded dispatcher, in-process on a private Redis: hand-outs, the fit rule, refills,
tasks handed back by recovery."""
from __future__ import annotations

import json

import pytest

from tests.support.helpers import wait_for
from tests.support.records import all_records_valid_town
from tinytownd.batch import dispatch, tasks
from tinytownd.batch.file import parse
from tinytownd.store import fit
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


@pytest.fixture
def town(redis_server):
    return Town(redis_server.client(), Keys("fb"))


def _agents(town, *specs):
    """Register (name, role) agents; their ids and the dispatcher's roster."""
    aids = [town.register_agent(name, role=role) for name, role in specs]
    return aids, [(name, fit.agent_words(role, name)) for name, role in specs]


def _inbox(town, aid) -> list[str]:
    return [json.loads(m)["task_id"] for m in town.r.lrange(town.keys.inbox(aid), 0, -1)]


def test_fresh_batch_hands_out_tasks_while_the_rest_is_still_being_submitted(town, monkeypatch):
    """A new embedded batch starts dispatching after its first chunk lands: agents get work
    before the whole file is in Redis, and every task is still handed out exactly once."""
    monkeypatch.setattr(tasks, "SUBMIT_CHUNK", 10)
    r, k = town.r, town.keys
    aids, roster = _agents(town, ("w1", "worker"), ("w2", "worker"), ("w3", "worker"))
    bf = parse({"tasks": [{"id": f"t{i}", "description": "x"} for i in range(50)]}, "g")
    batch = dispatch.DispatchedBatch(bf, "fb1", r, k, roster=roster)
    batch.wait_agents()
    batch.start_dispatch(fresh=True)
    queued_at_chunk = []

    def on_chunk(pairs):
        batch.feed(pairs)
        queued_at_chunk.append(sum(r.llen(k.inbox(a)) for a in aids))

    new, old = batch.submit(on_chunk=on_chunk)
    assert (new, old) == (50, 0) and len(queued_at_chunk) == 5
    assert queued_at_chunk[0] == 3 * dispatch.PREFETCH      # handed out after the first chunk
    handed = [t for a in aids for t in _inbox(town, a)]
    assert len(handed) == len(set(handed)) == 3 * dispatch.PREFETCH
    assert r.llen(k.backlog) == 50 - len(handed)            # the rest wait in the backlog, in order
    assert r.lrange(k.backlog, 0, -1) == [batch.ids[f"t{i}"] for i in range(50)
                                          if batch.ids[f"t{i}"] not in handed]
    assert {town.get_task(t)["state"] for t in handed} == {"assigned"}
    assert all_records_valid_town(town) == []


def test_start_dispatches_a_new_batch_from_the_first_chunk(town, monkeypatch):
    """start(resume=False) of a batch with nothing in Redis: fresh dispatch; a resume loads the
    states back instead and hands out only what is still queued."""
    monkeypatch.setattr(tasks, "SUBMIT_CHUNK", 3)
    aids, roster = _agents(town, ("w1", "worker"))
    bf = parse({"tasks": [f"task {i}" for i in range(6)]}, "g")
    first = dispatch.DispatchedBatch(bf, "s1", town.r, town.keys, roster=roster)
    assert first.start(resume=False) == (6, 0, 0)
    assert _inbox(town, aids[0]) == [first.ids["1"], first.ids["2"]]
    town.complete_task(first.ids["1"])
    again = dispatch.DispatchedBatch(bf, "s1", town.r, town.keys, roster=roster)
    assert again.start(resume=True) == (0, 6, 0)
    assert again.n_terminal == 1
    # task 2 is still in the inbox, task 3 tops it up again
    assert again.holder == {first.ids["2"]: aids[0], first.ids["3"]: aids[0]}
    assert _inbox(town, aids[0]) == [first.ids["1"], first.ids["2"], first.ids["3"]]


def test_tasks_go_only_to_agents_they_fit(town):
    aids, roster = _agents(town, ("writer-1", "writer"), ("reviewer-1", "reviewer"))
    bf = parse({"tasks": [{"id": "r1", "description": "x", "role": "reviewer"},
                          {"id": "r2", "description": "x", "role": "reviewer"},
                          {"id": "r3", "description": "x", "role": "reviewer"},
                          {"id": "any", "description": "x"},
                          {"id": "w", "description": "x", "tags": ["writer-1"]}]}, "g")
    batch = dispatch.DispatchedBatch(bf, "fit", town.r, town.keys, roster=roster)
    batch.submit()
    batch.wait_agents()
    batch.start_dispatch()
    writer, reviewer = aids
    assert _inbox(town, reviewer) == [batch.ids["r1"], batch.ids["r2"]]
    assert _inbox(town, writer) == [batch.ids["any"], batch.ids["w"]]
    assert town.r.lrange(town.keys.backlog, 0, -1) == [batch.ids["r3"]]   # waits for the reviewer


def test_a_finished_task_refills_its_agents_inbox(town):
    aids, roster = _agents(town, ("w1", "worker"))
    bf = parse({"tasks": [f"task {i}" for i in range(4)]}, "g")
    batch = dispatch.DispatchedBatch(bf, "rf", town.r, town.keys, roster=roster)
    batch.subscribe()
    batch.start(resume=False)
    ids = [batch.ids[str(i)] for i in range(1, 5)]
    assert _inbox(town, aids[0]) == ids[:2]
    town.complete_task(ids[0])
    assert batch._apply_notes(1.0) == 1
    wait_for(lambda: len(_inbox(town, aids[0])) == 3, 5, what="the refill")
    assert _inbox(town, aids[0]) == ids[:3] and batch.handed[aids[0]] == set(ids[1:3])
    batch.stop_dispatching()                        # a drain: nothing more goes out
    town.complete_task(ids[1])
    batch._apply_notes(1.0)
    assert batch.dispatch() == 0 and len(_inbox(town, aids[0])) == 3
    batch.close()


def test_a_task_handed_back_by_recovery_is_queued_again(town):
    aids, roster = _agents(town, ("w1", "worker"))
    bf = parse({"tasks": [f"task {i}" for i in range(3)]}, "g")
    batch = dispatch.DispatchedBatch(bf, "hb", town.r, town.keys, roster=roster)
    batch.start(resume=False)
    back = batch.ids["1"]
    # recovery: the inbox message gone, the task pending again and on no queue yet
    town.r.delete(town.keys.inbox(aids[0]))
    town.r.hset(town.keys.task(back), "state", "pending")
    batch.recount(all_tasks=True)
    assert back not in batch.holder and batch._handed_back == [back]
    batch.handed[aids[0]].add("busy")               # the agent's inbox is full: nothing goes out
    batch.handed[aids[0]].add("busier")
    assert batch.dispatch() == 0
    assert town.r.lrange(town.keys.backlog, 0, -1) == [batch.ids["3"], back]
    assert batch.queue == [batch.ids["3"], back]
    batch.handed[aids[0]] -= {"busy", "busier"}
    assert batch.dispatch() == 1                    # one slot: the third task, first in line
    assert _inbox(town, aids[0]) == [batch.ids["3"]]


def test_a_stale_pending_read_does_not_hand_a_task_back(town):
    """A re-count that read `pending` before the hand-out landed is stale, not a hand-back."""
    _aids, roster = _agents(town, ("w1", "worker"))
    bf = parse({"tasks": ["task"]}, "g")
    batch = dispatch.DispatchedBatch(bf, "st", town.r, town.keys, roster=roster)
    batch.start(resume=False)
    tid = batch.ids["1"]
    batch._read_at = batch._handed_at[tid] - 1.0
    batch._set(tid, "pending")
    assert batch.holder == {tid: _aids[0]} and batch._handed_back == []


def test_no_registered_agent_is_an_error(town):
    bf = parse({"tasks": ["task"]}, "g")
    batch = dispatch.DispatchedBatch(bf, "na", town.r, town.keys, roster=[("ghost", {"ghost"})])
    with pytest.raises(RuntimeError, match="no agent of the batch registered"):
        batch.wait_agents(timeout=0.1)
