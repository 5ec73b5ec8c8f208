"""`tinytownd batch MISSION_FILE`: a mission run headlessly through the missions API."""
from __future__ import annotations

import json

from tests.support.batch import run_batch
from tests.support.leftovers import no_redis_under

MISSION = """\
objective: "batch mission test"
policy: {max_parallel_items: 2, reviewer_required: false, max_attempts: 2}
agent_clis:
  t: {command: 'p="$(cat)"; case "$p" in *FAIL*) echo broken; exit 3;; esac; echo "ok $TINYTOWN_TASK_ID"',
      max_attempts: 1}
agents: [{name: w, role: worker, cli: t, count: 2}]
work_items:
  - {id: a, title: A, description: "first"}
  - {id: b, title: B, depends_on: [a], description: "%s"}
  - {id: c, title: C, depends_on: [a], description: "third"}
  - {id: d, title: D, depends_on: [b, c], description: "last"}
"""


def test_mission_batch_completes_in_dependency_order(tmpdir_short):
    f = tmpdir_short / "m.yaml"
    f.write_text(MISSION % "second")
    summ = tmpdir_short / "s.json"
    p = run_batch(str(f), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  "--progress", "json", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["totals"]["completed"] == 4 and s["totals"]["total"] == 4
    rows = {t["id"]: t for t in s["tasks"]}
    assert all(t["state"] == "completed" and t["attempts"] == 1 for t in rows.values())
    assert rows["a"]["completed_at"] <= rows["b"]["started_at"]
    assert max(rows["b"]["completed_at"], rows["c"]["completed_at"]) <= rows["d"]["started_at"]
    assert rows["d"]["result"].startswith("ok ")
    first = json.loads(p.stdout.splitlines()[0])
    assert first["event"] == "batch.start" and first["kind"] == "mission"
    assert no_redis_under(tmpdir_short)


def test_mission_batch_with_a_failing_item_exits_1(tmpdir_short):
    f = tmpdir_short / "m.yaml"
    f.write_text(MISSION % "this one FAILs")
    summ = tmpdir_short / "s.json"
    p = run_batch(str(f), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  "--progress", "none", cwd=tmpdir_short, timeout=90)
    assert p.returncode == 1, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    rows = {t["id"]: t for t in s["tasks"]}
    assert rows["b"]["state"] == "failed" and rows["b"]["attempts"] == 2
    assert "exit status 3" in rows["b"]["result"]
    assert rows["a"]["state"] == rows["c"]["state"] == "completed"
    assert rows["d"]["state"] == "failed"          # never ran: its dependency failed


def test_invalid_mission_exits_2(tmpdir_short):
    f = tmpdir_short / "m.yaml"
    f.write_text("work_items:\n  - {id: a, title: A, depends_on: [ghost]}\n"
                 "agent_clis: {t: 'true'}\n")
    p = run_batch(str(f), "--dir", str(tmpdir_short / "run"), cwd=tmpdir_short)
    assert p.returncode == 2, p.stderr
    assert "ghost" in p.stderr and "m.yaml" in p.stderr


def test_a_stuck_mission_counts_what_did_not_run_as_failed(redis_server, monkeypatch):
    """Nothing ready, assigned or running while items are unfinished: after STUCK_S the batch
    is finished, and what did not run counts as failed."""
    from types import SimpleNamespace

    from tinytownd.batch import mission
    from tinytownd.batch.file import parse
    from tinytownd.store.keys import Keys

    monkeypatch.setattr(mission, "STUCK_S", 0.0)
    bf = parse({"objective": "o", "work_items": [{"id": "a", "title": "A"},
                                                 {"id": "b", "title": "B", "depends_on": ["a"]}]},
               "m.yaml")
    b = mission.MissionBatch(bf, "m1", redis_server.client(), Keys("mb"))
    b.ids, b.total, b.mission_state = {"a": "wa", "b": "wb"}, 2, "running"
    b.items = {"wa": SimpleNamespace(status="ready"), "wb": SimpleNamespace(status="pending")}
    for wid, it in b.items.items():
        b._set(wid, mission.ITEM_STATE[it.status])
    c = b.counts()
    assert (c.queued, c.failed, c.finished) == (2, 0, False)      # a can run: not stuck
    b.items["wa"].status = "blocked"                               # used up its attempts
    b._set("wa", mission.ITEM_STATE["blocked"])
    c = b.counts()
    assert (c.completed, c.failed, c.queued, c.finished) == (0, 2, 0, True)
    b.mission_state = "completed"                                  # the mission's word wins
    assert b.counts().failed == 1
