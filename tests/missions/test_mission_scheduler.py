"""Pure scheduler tests: plain data in, writes out (no Redis)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tinytownd.missions import scoring
from tinytownd.missions.compile import MissionFileError, compile_text
from tinytownd.missions.model import (MissionControlMessage, MissionPolicy, validate_control,
                                      validate_mission, validate_watch, validate_work)
from tinytownd.missions.scheduler import (TickInput, WatchOutcome, pr_refs, run_tick,
                                          task_binding, topo_depth)
from tinytownd.store.wire import utcnow
from tests.support.missions import DIAMOND  # noqa: E402



def agent(name, role=None, state="idle", aid=None):
    import uuid
    return {"id": aid or str(uuid.uuid4()), "name": name, "role_id": role, "state": state,
            "last_active_at": ""}


class Sim:
    """Drives the pure scheduler over in-memory records, like the engine does."""

    def __init__(self, text=DIAMOND, agents=None):
        self.c = compile_text(text, "<t>")
        self.m = self.c.mission
        self.items = {it.id: it for it in self.c.items}
        self.watches, self.cmd = {}, {w.id: w for w in self.c.cmd_watches}
        self.meta = dict(self.c.meta)
        self.tasks = {}
        self.agents = agents or [agent("w1", "worker"), agent("w2", "worker")]
        self.controls = []
        self.now = utcnow()
        self.fid = {v: k for k, v in self.c.file_ids.items()}

    def tick(self, results=None):
        self.now += timedelta(seconds=1)
        inp = TickInput(mission=self.m, items=self.items, watches=self.watches,
                        cmd_watches=self.cmd, controls=[c for c in self.controls
                                                        if c.processed_at is None],
                        tasks=self.tasks, agents=self.agents, meta=self.meta, now=self.now,
                        watch_results=results or {})
        out = run_tick(inp)
        self.m = out.mission
        for k_, v in out.meta_set.items():
            self.meta[k_] = v
        for k_ in out.meta_del:
            self.meta.pop(k_, None)
        for tid in out.tasks_processed:
            self.tasks.pop(tid, None)
        for tid, _ in out.cancel_tasks:
            pass
        for nt in out.new_tasks:
            self.tasks[nt.task_id] = {"id": nt.task_id, "state": "assigned", "tags": nt.tags,
                                      "assigned_to": nt.agent, "description": nt.description}
        for rec in list(self.items.values()) + [self.m]:
            assert not validate_work(rec.to_json()) if rec is not self.m else \
                not validate_mission(rec.to_json())
        return out

    def live(self):
        return [t for t in self.tasks.values() if t["state"] in ("assigned", "running")]

    def finish(self, tid, state="completed", result="ok"):
        self.tasks[tid]["state"] = state
        self.tasks[tid]["result"] = result


def test_diamond_in_dependency_order_with_parallel_limit():
    s = Sim()
    order = []
    for _ in range(30):
        s.tick()
        live = s.live()
        assert len(live) <= 2
        for t in live:
            wid = task_binding(t)[1]
            order.append(s.fid[wid])
            s.finish(t["id"])
        if s.m.state == "completed":
            break
    assert s.m.state == "completed"
    pos = {x: order.index(x) for x in order}
    assert sorted(order) == list("abcdef")
    for x, deps in {"b": "a", "c": "a", "d": "a", "e": "bc", "f": "de"}.items():
        assert all(pos[d] < pos[x] for d in deps)


def test_role_routing_tables():
    tester, backend, rev = agent("tester", "tester"), agent("backend-worker"), agent("x", "review")
    assert scoring.base_score("implement", None, backend) > scoring.base_score("implement", None,
                                                                              tester)
    assert scoring.base_score("review", "reviewer", rev) == 120
    assert scoring.base_score("implement", None, rev) == 0
    assert scoring.base_score("review", "backend", agent("a", "audit")) == 120
    assert scoring.base_score("test", "tester", tester) == 100


def test_failed_task_retried_then_blocked_and_escalated():
    s = Sim("""
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


def test_pause_resume_redirect_notes():
    w1, w2 = agent("w1", "worker"), agent("w2", "worker", state="working")
    s = Sim("""
policy: {reviewer_required: false}
work_items: [{id: x, title: X}]
""", agents=[w1, w2])
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


def test_pr_submission_watches_and_gate():
    rev = agent("rev", "reviewer")
    s = Sim("""
policy: {reviewer_required: true}
work_items: [{id: x, title: X}]
""", agents=[agent("w1", "worker"), rev])
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
    w1 = agent("w1", "worker")
    s = Sim("""
policy: {reviewer_required: false}
work_items: [{id: x, title: X}]
""", agents=[w1])
    s.tick()
    (t,) = s.live()
    s.finish(t["id"], result="https://github.com/o/r/pull/9")
    s.tick()
    pr = next(w for w in s.watches.values() if w.kind == "pr_checks")
    out = s.tick({pr.id: WatchOutcome(ok=True, triggered=True, complete=False)})
    fixes = [x for x in s.live() if "mission-fix-task" in x["tags"]]
    assert len(fixes) == 1 and fixes[0]["assigned_to"] == w1["id"]
    assert pr.status == "snoozed"
    pr.next_due_at = s.now
    s.tick({pr.id: WatchOutcome(ok=True, triggered=True, complete=False)})
    assert len([x for x in s.live() if "mission-fix-task" in x["tags"]]) == 1  # dedup (B8)


def test_ready_order_is_topological_then_created():
    s = Sim()
    d = topo_depth(s.items)
    assert sorted(d[s.c.file_ids[x]] for x in "abcdef") == [0, 1, 1, 1, 2, 3]


def test_pr_refs_canonical():
    assert pr_refs(["https://github.com/o/r/pull/3", "see o/r#3", "x"]) == ["o/r#3"]


@pytest.mark.parametrize("text,needle", [
    ("work_items: [{id: a, depends_on: [zz]}]", "work_items[0] 'a': depends_on 'zz' does not exist"),
    ("work_items: [{id: a}, {id: a}]", "duplicate id 'a'"),
    ("work_items: [{id: a, depends_on: [b]}, {id: b, depends_on: [a]}]", "dependency cycle: 'a' -> 'b' -> 'a'"),
    ("work_items: [{id: a, kind: dance}]", "work_items[0] 'a': unknown kind 'dance'"),
    ("work_items: [{id: a, owner_role: wizard}]", "work_items[0] 'a': unknown owner_role 'wizard'"),
    ("work_items: []", "work_items: must be a non-empty list"),
    ("policy: {max_parallel_items: 0}\nwork_items: [{id: a}]", "policy.max_parallel_items"),
])
def test_invalid_files_name_the_item(text, needle):
    from tinytownd.missions.compile import known_roles
    with pytest.raises(MissionFileError) as e:
        compile_text(text, "m.yaml", roles=known_roles())
    assert needle in str(e.value)


def test_records_match_tt_rules():
    s = Sim()
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


def test_help_when_stalled_without_agents_and_backoff():
    s = Sim("""
policy: {reviewer_required: false}
work_items: [{id: x, title: X}]
""", agents=[agent("w1", "worker", state="working")])
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
    assert s.tick().help_question is None and s.m.state == "blocked"   # paused: no help (B10)


def test_gh_parsing_fixes():
    from tinytownd.missions.model import WatchItem
    from tinytownd.missions.watches import canonical_pr, evaluate, parse_pr
    w = WatchItem(id="x", mission_id="m", work_item_id="w", kind="pr_checks", target_ref="o/r#1")
    running = parse_pr({"statusCheckRollup": [{"name": "a", "status": "IN_PROGRESS",
                                               "conclusion": ""},
                                              {"name": "b", "conclusion": "SUCCESS"}]})
    assert running.ci == "pending" and evaluate("pr_checks", running, w) == (False, False)
    failed = parse_pr({"statusCheckRollup": [{"context": "ci", "state": "FAILURE"}]})
    assert evaluate("pr_checks", failed, w) == (True, False)
    none = parse_pr({"statusCheckRollup": []})
    assert evaluate("pr_checks", none, w) == (False, False)        # first poll: wait
    w.last_check_at = utcnow()
    assert evaluate("pr_checks", none, w) == (False, True)         # then: no checks = green
    old_bot = parse_pr({"comments": [{"author": {"login": "cursor-bugbot"}, "body": "bug",
                                      "createdAt": "2025-01-01T00:00:00Z"}],
                        "commits": [{"committedDate": "2025-01-02T00:00:00Z"}]})
    assert old_bot.bot_comments == []                               # older than the last commit
    rev = parse_pr({"latestReviews": [
        {"author": {"login": "a"}, "state": "CHANGES_REQUESTED", "submittedAt": "2025-01-01T00:00:00Z"},
        {"author": {"login": "a"}, "state": "APPROVED", "submittedAt": "2025-01-02T00:00:00Z"}]})
    assert not rev.changes_requested
    assert parse_pr({"reviewDecision": "CHANGES_REQUESTED"}).changes_requested
    assert canonical_pr("https://github.com/o/r/pull/5") == canonical_pr("o/r#5") == "o/r#5"
    assert canonical_pr("not-a-pr") is None


def test_issue_parsing_word_boundaries():
    from tinytownd.missions.github import infer_kind, infer_role, parse_deps
    assert parse_deps("Depends on #1, #2 and o/x#3. Blocked by #4", "o", "r") == [
        ("o", "r", 1), ("o", "r", 2), ("o", "x", 3), ("o", "r", 4)]
    assert parse_deps("hereafter #3; thereafter #4", "o", "r") == []
    assert parse_deps("requires: #9", "o", "r") == [("o", "r", 9)]
    assert infer_kind("A specific build step") == "implement"
    assert infer_kind("Add integration tests") == "test"
    assert infer_kind("RFC: new storage") == "design"
    assert infer_role("Build the auth API", "implement") == "backend"
    assert infer_role("Build the suite", "implement") is None
    assert infer_role("x", "test") == "tester"


def test_dead_assignee_task_cancelled_and_item_released():
    w1, w2 = agent("w1", "worker"), agent("w2", "worker")
    s = Sim("""
policy: {reviewer_required: false}
work_items: [{id: x, title: X}]
""", agents=[w1, w2])
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
    s = Sim("""
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
