"""Mission records (mission.py, work.py, watch.py) against tt's rules (validate.py)."""
from __future__ import annotations

from tinytownd.missions.mission import Mission, MissionPolicy
from tinytownd.missions.validate import validate_mission, validate_work
from tinytownd.missions.watch import pr_refs
from tinytownd.missions.work import WorkItem, task_binding, task_tags
from tests.support.missions import TickSim


def test_records_match_tt_rules():
    s = TickSim()
    assert validate_mission(s.m.to_json()) == []
    assert all(validate_work(it.to_json()) == [] for it in s.items.values())
    bad = s.m.to_dict()
    bad["state"] = "paused"
    assert validate_mission(bad)
    bad = s.m.to_dict()
    del bad["policy"]["auto_merge"]
    assert validate_mission(bad)
    w = next(iter(s.items.values())).to_dict()
    w["created_at"] = "2025-01-01T00:00:00"
    assert validate_work(w)
    assert MissionPolicy().to_dict() == {"max_parallel_items": 2, "reviewer_required": True,
                                         "auto_merge": False, "watch_interval_secs": 180}


def test_records_round_trip():
    s = TickSim()
    assert Mission.from_json(s.m.to_json()) == s.m
    for it in s.items.values():
        assert WorkItem.from_json(it.to_json()) == it
    d = next(iter(s.items.values())).to_dict()
    d["id"] = d["id"].upper()                        # tt reads any UUID spelling
    assert WorkItem.from_json(d).id == d["id"].lower()


def test_task_tags_bind_to_the_item():
    mid, wid = "m-id", "w-id"
    for kind in ("work", "review", "fix"):
        assert task_binding(task_tags(kind, mid, wid)) == (mid, wid, kind)
    tags = task_tags("fix", mid, wid, ["watch:abc"])
    assert "mission-task:fix" not in tags and "watch:abc" in tags
    assert task_binding(tags) == (mid, wid, "fix")
    assert task_binding(None) == (None, None, None)


def test_pr_refs_canonical():
    assert pr_refs(["https://github.com/o/r/pull/3", "see o/r#3", "x"]) == ["o/r#3"]
