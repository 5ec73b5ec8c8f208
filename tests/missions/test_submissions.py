"""From submitted work to a done item (submissions.py), through the pure tick."""
from __future__ import annotations

from tinytownd.missions.tick import WatchOutcome
from tinytownd.missions.validate import validate_watch
from tests.support.missions import ONE_ITEM, TickSim, agent_record, with_policy


def test_pr_submission_watches_and_gate():
    rev = agent_record("rev", "reviewer")
    s = TickSim(with_policy(ONE_ITEM, reviewer_required=True),
                agents=[agent_record("w1", "worker"), rev])
    s.tick()
    (t,) = s.live()
    s.finish(t["id"], result="done: https://github.com/o/r/pull/7 and o/r#7")
    s.tick()
    it = next(iter(s.items.values()))
    assert it.status == "blocked"
    assert sorted(w.kind for w in s.watches.values()) == sorted(
        ["pr_checks", "bugbot_comments", "review_comments", "mergeability"])
    assert all(validate_watch(w.to_json()) == [] for w in s.watches.values())
    (rt,) = s.live()
    assert rt["assigned_to"] == rev["id"] and "mission-review-task" in rt["tags"]
    s.finish(rt["id"], result="approved: lgtm")
    s.tick()
    assert it.reviewer_approved and it.status == "blocked"
    res = {}
    for w in s.watches.values():
        res[w.id] = WatchOutcome(ok=True, triggered=w.kind == "mergeability", complete=True)
    s.tick(res)
    assert it.status == "done" and s.m.state == "completed"


def test_failing_ci_creates_one_fix_task_for_implementer():
    w1 = agent_record("w1", "worker")
    s = TickSim(ONE_ITEM, agents=[w1])
    s.tick()
    (t,) = s.live()
    s.finish(t["id"], result="https://github.com/o/r/pull/9")
    s.tick()
    pr = next(w for w in s.watches.values() if w.kind == "pr_checks")
    s.tick({pr.id: WatchOutcome(ok=True, triggered=True, complete=False)})
    fixes = [x for x in s.live() if "mission-fix-task" in x["tags"]]
    assert len(fixes) == 1 and fixes[0]["assigned_to"] == w1["id"]
    assert f"watch:{pr.id}" in fixes[0]["tags"]
    assert pr.status == "snoozed"
    pr.next_due_at = s.now
    s.tick({pr.id: WatchOutcome(ok=True, triggered=True, complete=False)})
    # one open fix task per item and watch
    assert len([x for x in s.live() if "mission-fix-task" in x["tags"]]) == 1
