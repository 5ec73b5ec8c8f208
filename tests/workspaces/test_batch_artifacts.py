"""`tinytownd batch` in worktree mode: summary fields, the BRANCH column, --patches that `git am`
applies onto base, --junit that a JUnit parser reads; bad workspace keys refused naming them."""
import json
import os
import xml.etree.ElementTree as ET

import junitparser
import pytest

from tests.support.batch import run_batch
from tests.support.gitrepo import branches, git, make_repo, status, worktrees

# each task appends its own line to shared.txt and writes its own file; FAIL tasks fail
EDIT = ('p="$(cat)"; case "$p" in *FAIL*) echo half > half.txt; echo "no can do"; exit 3;; esac; '
        'echo "$TINYTOWN_TASK_ID" >> shared.txt; echo one > "f-$TINYTOWN_TASK_ID.txt"')


def _file(path, repo, n=5, fail=(), ws_extra=""):
    lines = ["agent_clis:", f"  e: {{command: {json.dumps(EDIT)}, max_attempts: 1}}",
             "agents: [{name: w, role: worker, cli: e, count: 3}]",
             f"workspace: {{mode: worktree, repo: {json.dumps(str(repo))}{ws_extra}}}",
             "tasks:"]
    for i in range(n):
        lines.append(f"  - {{id: 'job/{i}', description: \"change number {i}"
                     f"{' FAIL' if i in fail else ''}\"}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_summary_patches_junit(tmpdir_short):
    repo = make_repo(tmpdir_short / "repo", {"shared.txt": "base\n"})
    f = _file(tmpdir_short / "b.yaml", repo, n=5, fail={3})
    out = tmpdir_short / "out"
    r = run_batch(str(f), "--dir", str(tmpdir_short / "bd"), "--progress", "none",
                  "--summary", str(out / "s.json"), "--patches", str(out / "patches"),
                  "--junit", str(out / "junit.xml"), cwd=tmpdir_short, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr              # one task failed
    doc = json.loads((out / "s.json").read_text())
    rows = {t["id"]: t for t in doc["tasks"]}
    assert "BRANCH" in r.stdout and "CHANGES" in r.stdout
    base = git(repo, "rev-parse", "main").strip()
    for i in (0, 1, 2, 4):
        t = rows[f"job/{i}"]
        assert t["state"] == "completed" and t["base"] == base
        assert t["branch"].startswith(f"tt/{t['task_id'][:8]}-change-number-{i}")
        assert t["branch"] in r.stdout
        assert git(repo, "rev-parse", t["branch"]).strip() == t["head"]
        assert (t["files_changed"], t["insertions"], t["deletions"]) == (2, 2, 0)
    bad = rows["job/3"]
    assert bad["state"] == "failed" and bad["head"] == base and bad["files_changed"] == 0
    assert status(repo) == "" and (repo / "shared.txt").read_text() == "base\n"
    # --patches: one per task with changes, each applies with git am onto base in a clone
    names = sorted(os.listdir(out / "patches"))
    assert names == ["job_0.patch", "job_1.patch", "job_2.patch", "job_4.patch"]
    assert sorted(doc["patches"]) == names
    for i in (0, 1, 2, 4):
        t = rows[f"job/{i}"]
        clone = tmpdir_short / f"clone{i}"
        git(tmpdir_short, "clone", "-q", str(repo), str(clone))
        git(clone, "checkout", "-q", "-b", "review", t["base"])
        git(clone, "am", "-q", str(out / "patches" / f"job_{i}.patch"))
        assert (clone / "shared.txt").read_text() == f"base\n{t['task_id']}\n"
        assert git(clone, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse",
                                                              f"{t['head']}^{{tree}}")
        assert git(clone, "log", "-1", "--format=%s").strip() == f"change number {i}"
    # --junit: parses, one testcase per task, the failure carries reason and output
    xml = junitparser.JUnitXml.fromfile(str(out / "junit.xml"))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    cases = [c for s in suites for c in s]
    assert len(cases) == 5 and {c.name for c in cases} == set(rows)
    (failed,) = [c for c in cases if not c.is_passed]
    assert failed.name == "job/3"
    (res,) = failed.result
    assert isinstance(res, junitparser.Failure) and "exit status 3" in res.message
    assert "no can do" in (res.text or "")
    assert suites[0].tests == 5 and suites[0].failures == 1
    root = ET.parse(out / "junit.xml").getroot()
    for case in root.iter("testcase"):                # the schema's required attributes
        assert {"name", "classname", "time"} <= set(case.attrib)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["attempts"] == "1" and "branch" in props or case.get("name") == "job/3"
    # the failed task's worktree is kept (on_failure) with what it wrote; the rest removed
    (kept,) = worktrees(repo)
    assert kept.endswith(bad["task_id"]) and open(os.path.join(kept, "half.txt")).read() == "half\n"
    # branches: the completed tasks' (with commits), and the failed one's while its worktree stays
    assert sorted(branches(repo)) == sorted(rows[f"job/{i}"]["branch"] for i in range(5))


@pytest.mark.parametrize("ws,key,words", [
    ("", "workspace.repo", "not a git repository"),
    (", branch: 'tt/{nope}'", "workspace.branch", "unknown placeholder {nope}"),
    (", keep: sometimes", "workspace.keep", "not one of"),
])
def test_bad_workspace_in_a_batch_file_exits_2_naming_the_key(tmpdir_short, ws, key, words):
    plain = tmpdir_short / "plain"
    plain.mkdir(exist_ok=True)
    repo = plain if not ws else make_repo(tmpdir_short / "repo")
    f = _file(tmpdir_short / "b.yaml", repo, n=1, ws_extra=ws)
    r = run_batch(str(f), "--dir", str(tmpdir_short / "bd"), "--progress", "none",
                  cwd=tmpdir_short)
    assert r.returncode == 2, r.stdout + r.stderr
    assert key in r.stderr and words in r.stderr, r.stderr


def test_workspace_not_a_mapping(tmpdir_short):
    f = tmpdir_short / "b.yaml"
    f.write_text("workspace: worktree\ntasks: [{id: a, description: x}]\n")
    r = run_batch(str(f), "--dir", str(tmpdir_short / "bd"), cwd=tmpdir_short)
    assert r.returncode == 2 and "workspace" in r.stderr and "mapping" in r.stderr
