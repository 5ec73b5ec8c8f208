"""A mission in worktree mode: a work item's result records its branch, and a dependent item's
prompt names the branches its dependencies produced (it can merge them and build on them)."""
import json

from tests.support.batch import run_batch
from tests.support.gitrepo import git, make_repo

MISSION = """\
objective: "build on each other's branches"
policy: {max_parallel_items: 2, reviewer_required: false, max_attempts: 1}
agent_clis:
  t: {command: %s, max_attempts: 1}
agents: [{name: w, role: worker, cli: t, count: 2}]
workspace: {mode: worktree, repo: %s}
work_items:
  - {id: a, title: A, description: "first"}
  - {id: b, title: B, description: "second"}
  - {id: c, title: C, depends_on: [a, b], description: "merge them"}
"""
# writes its prompt into the tree; the dependent merges every branch its prompt names
CLI = ('cat > "prompt-$TINYTOWN_TASK_ID.md"; '
       'for br in $(sed -n "s/^- .*): //p" "prompt-$TINYTOWN_TASK_ID.md"); do '
       'git -c user.name=m -c user.email=m@x.invalid merge -q --no-edit "$br" || exit 9; done; '
       'echo "ok $TINYTOWN_BRANCH"')


def test_dependents_are_told_the_branches(tmpdir_short):
    repo = make_repo(tmpdir_short / "repo")
    f = tmpdir_short / "m.yaml"
    f.write_text(MISSION % (json.dumps(CLI), json.dumps(str(repo))))
    summ = tmpdir_short / "s.json"
    p = run_batch(str(f), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  "--progress", "none", cwd=tmpdir_short, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    rows = {t["id"]: t for t in json.loads(summ.read_text())["tasks"]}
    assert all(rows[i]["branch"] for i in "abc"), rows
    prompt = git(repo, "show", f"{rows['c']['branch']}:prompt-{rows['c']['task_id']}.md")
    assert "Branches of its dependencies" in prompt
    for i, title in (("a", "A"), ("b", "B")):
        assert f"): {rows[i]['branch']}\n" in prompt and f"- {title} (" in prompt
    # c merged both: its branch holds a's and b's work
    files = git(repo, "ls-tree", "--name-only", rows["c"]["branch"]).split()
    for i in "ab":
        assert f"prompt-{rows[i]['task_id']}.md" in files
    a_prompt = git(repo, "show", f"{rows['a']['branch']}:prompt-{rows['a']['task_id']}.md")
    assert "Branches of its dependencies" not in a_prompt


def test_dependency_branches_pure():
    from types import SimpleNamespace

    from tinytownd.missions.scheduler import dependency_branches
    from tinytownd.missions.work import WorkItem
    a = WorkItem(id="a", mission_id="m", title="A", artifact_refs=["task:1", "branch:tt/x"])
    b = WorkItem(id="b", mission_id="m", title="B", artifact_refs=["task:2", "done"])
    c = WorkItem(id="c", mission_id="m", title="C", depends_on=["a", "b", "gone"])
    t = SimpleNamespace(items={"a": a, "b": b, "c": c})
    assert dependency_branches(t, c) == ("\nBranches of its dependencies (git; build on them, "
                                         "e.g. merge them into your branch):\n- A (a): tt/x\n")
    assert dependency_branches(t, a) == ""


def test_task_result_records_its_branch():
    from types import SimpleNamespace

    from tinytownd.missions import scheduler
    from tinytownd.missions.work import WorkItem
    it = WorkItem(id="a", mission_id="m", title="A", status="running")
    seen = {}
    orig = scheduler.record_submission
    scheduler.record_submission = lambda t, item, arts: seen.setdefault("arts", arts)
    try:
        t = SimpleNamespace(out=SimpleNamespace(tasks_processed=set()), freed=set())
        scheduler.task_finished(t, it, {"id": "T", "state": "completed", "result": "ok",
                                        "branch": "tt/T-a", "tags": ["mission:m"]})
    finally:
        scheduler.record_submission = orig
    assert seen["arts"] == ["task:T", "branch:tt/T-a", "ok"]
