"""Missions in the real daemon (`tinytownd run`) with real agent subprocesses (examples/missions/
agent.sh run by the town runtime), driven by the real CLI."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.support.daemon import DaemonProcess
from tests.support.helpers import ROOT, run_cli
from tests.support.missions import (DIAMOND, fake_gh, live_tasks_by_item, mission_state,
                                    wait_for, with_policy)
from tinytownd.store import records
from tinytownd.store.keys import Keys

AGENT = ROOT / "examples" / "missions" / "agent.sh"
TOWN = "md"


def mission_daemon(root, url, agents, sleep="0.1") -> DaemonProcess:
    """A daemon on the test's Redis with shell-script agents (examples/missions/agent.sh)."""
    return DaemonProcess(
        root, town={"name": TOWN}, redis={"url": url}, control={"socket": "d.sock"},
        runtime={"heartbeat_interval_s": 0.2, "lease_ttl_s": 2.0, "stale_after_s": 2.0,
                 "sweep_interval_s": 0.3, "retry_backoff_s": 0.05, "block_timeout_s": 0.2},
        agent_clis={"fake": {"command": f"sh {AGENT}", "timeout_s": 30, "max_attempts": 1,
                             "env": {"AGENT_SLEEP": sleep}}},
        agents=agents, missions={"lease_ttl_s": 3, "sweep_interval_s": 1})


@pytest.fixture
def daemons(redis_server, tmpdir_short):
    made = []

    def make(agents, sleep="0.1", sub="d"):
        d = mission_daemon(tmpdir_short / sub, redis_server.url, agents, sleep)
        made.append(d)
        return d
    try:
        yield make
    finally:
        for d in made:
            d.terminate(20)
            d.cleanup()


def test_diamond_file_with_real_agents_and_restart(daemons, redis_server, tmp_path):
    d = daemons([{"name": "w", "role": "worker", "cli": "fake", "count": 2}], sleep="0.4").start()
    r = redis_server.client()
    keys = Keys(TOWN)
    mf = tmp_path / "m.yaml"
    # DIAMOND with the default max_attempts (3)
    mf.write_text(with_policy(DIAMOND, max_attempts=None))
    p = d.cli("mission", "start", str(mf))
    assert p.returncode == 0, p.stderr
    mid = p.stdout.strip()
    assert records._ANY_UUID_RE.match(mid)
    # mid-mission: kill -9 the daemon, start it again
    wait_for(lambda: r.hget(keys.mission_work(mid), "x") is None and any(
        json.loads(v)["status"] == "done" for v in r.hvals(keys.mission_work(mid))), timeout=30,
        what="first item done")
    d.kill()
    d.start()
    dupes = []
    def done():
        for w, ts in live_tasks_by_item(r, keys).items():
            if len(ts) > 1:
                dupes.append(ts)
        return mission_state(r, keys, mid) == "completed"
    wait_for(done, timeout=45, what="mission completed after restart")
    assert dupes == []
    tasks = [r.hgetall(k) for k in r.scan_iter(match=keys.pattern("task"))]
    bound = [t for t in tasks if f"mission:{mid}" in records.decode_tags(t["tags"])]
    per_item = {}
    for t in bound:
        w = next(x for x in records.decode_tags(t["tags"]) if x.startswith("work-item:"))
        per_item.setdefault(w, []).append(t["state"])
    assert len(per_item) == 6
    # at most one completed task per item (a task interrupted by kill -9 may be re-run)
    assert all(states.count("completed") == 1 for states in per_item.values()), per_item
    p = d.cli("mission", "status", mid, "--json")
    assert json.loads(p.stdout)["done"] == 6


def test_cli_errors_and_listing(daemons, redis_server, tmp_path):
    d = daemons([])
    bad = ROOT / "examples" / "missions" / "broken.yaml"
    p = d.cli("mission", "start", str(bad))
    assert p.returncode == 65
    assert "work_items[1] 'b': depends_on 'ghost' does not exist" in p.stderr
    p = d.cli("mission", "start", str(tmp_path / "missing.yaml"))
    assert p.returncode == 66
    p = d.cli("mission", "status", "0000dead")
    assert p.returncode == 65 and "unknown mission" in p.stderr
    r = redis_server.client()
    assert not list(r.scan_iter(match=f"tt:{TOWN}:mission:*"))     # nothing half-written
    p = d.cli("mission", "start", str(ROOT / "examples" / "missions" / "diamond.yaml"))
    assert p.returncode == 0, p.stderr
    mid = p.stdout.strip()
    p = d.cli("mission", "list")
    assert mid in p.stdout and "0/6 done" in p.stdout
    p = d.cli("mission", "stop", mid)
    assert p.returncode == 0 and "running -> blocked" in p.stdout
    assert d.cli("mission", "list").stdout.strip().startswith("no missions")
    assert mid in d.cli("mission", "list", "--all").stdout
    p = d.cli("mission", "resume", mid, "--json")
    assert json.loads(p.stdout)["state"] == "running"
    cfg_bad = tmp_path / "bad.yaml"
    cfg_bad.write_text("town: {name: 'x y'}\n")
    p = run_cli("mission", "list", "-c", str(cfg_bad))
    assert p.returncode == 78
    cfg_off = tmp_path / "off.yaml"
    cfg_off.write_text("town: {name: t}\nredis: {url: 'unix:///tmp/nonexistent-tt.sock'}\n")
    p = run_cli("mission", "list", "-c", str(cfg_off))
    assert p.returncode == 69


def test_issues_source_with_fake_gh(daemons, redis_server, tmp_path):
    gh = fake_gh(tmp_path / "gh", {})
    prs = tmp_path / "gh" / "prs"
    (prs / "issue_o_r_1").write_text(json.dumps({"title": "Design the API", "body": "rfc"}))
    (prs / "issue_o_r_2").write_text(json.dumps({"title": "Build it",
                                                 "body": "Depends on #1. Hereafter #3 is unrelated"}))
    (prs / "issue_o_r_3").write_text(json.dumps({"title": "Tests", "body": "blocked by #2, #1"}))
    d = daemons([])
    data = yaml.safe_load(d.cfg_path.read_text())
    data["missions"]["gh"] = str(gh)
    d.cfg_path.write_text(yaml.safe_dump(data))
    p = d.cli("mission", "start", "--issue", "o/r#1", "-i", "o/r#2", "-i",
              "https://github.com/o/r/issues/3", "--no-reviewer", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    r = redis_server.client()
    keys = Keys(TOWN)
    items = {json.loads(v)["source_ref"]: json.loads(v)
             for v in r.hvals(keys.mission_work(out["mission"]))}
    assert set(items) == {"o/r#1", "o/r#2", "o/r#3"}
    ids = {k: v["id"] for k, v in items.items()}
    assert items["o/r#1"]["kind"] == "design" and items["o/r#3"]["kind"] == "test"
    assert items["o/r#2"]["depends_on"] == [ids["o/r#1"]]       # "hereafter #3" ignored
    assert sorted(items["o/r#3"]["depends_on"]) == sorted([ids["o/r#1"], ids["o/r#2"]])
    m = json.loads(r.get(keys.mission(out["mission"])))
    assert m["objective_refs"][0] == {"type": "issue", "owner": "o", "repo": "r", "number": 1}
    assert m["policy"]["reviewer_required"] is False
    p = d.cli("mission", "start", "--issue", "not a ref")
    assert p.returncode == 65


def test_two_daemons_ten_missions_kill9_real_agents(daemons, redis_server, tmp_path):
    from tinytownd.daemon import control
    a = daemons([{"name": "a", "role": "worker", "cli": "fake", "count": 2}], sleep="0.4",
               sub="a").start()
    b = daemons([{"name": "b", "role": "worker", "cli": "fake", "count": 2}], sleep="0.4",
               sub="b").start()
    r = redis_server.client()
    keys = Keys(TOWN)

    def token(d):
        st = control.request(d.root / "d.sock", "status", timeout=5)
        return st["components"]["missions"]["engine"]
    ta = wait_for(lambda: _try(lambda: token(a)), timeout=20, what="daemon a ready")
    tb = wait_for(lambda: _try(lambda: token(b)), timeout=20, what="daemon b ready")
    wait_for(lambda: r.zcard(keys.mission_engines) == 2, what="both engines registered")
    mf = tmp_path / "m.yaml"
    mf.write_text("""
policy: {max_parallel_items: 2, reviewer_required: false}
work_items:
  - {id: a, title: A}
  - {id: b, title: B, depends_on: [a]}
  - {id: c, title: C, depends_on: [a]}
  - {id: d, title: D, depends_on: [b, c]}
""")
    mids = []
    for _ in range(10):
        p = a.cli("mission", "start", str(mf))
        assert p.returncode == 0, p.stderr
        mids.append(p.stdout.strip())
    seen = set()          # holders sampled over time: a quick daemon may finish some first

    def both_held():
        holders = {r.get(keys.mission_lock(m)) for m in mids}
        seen.update(holders)
        return seen >= {ta, tb} and ta in holders
    wait_for(both_held, timeout=20, interval=0.02, what="both daemons hold missions")
    dupes = []

    def sample():
        for w, ts in live_tasks_by_item(r, keys).items():
            if len(ts) > 1:
                dupes.append(ts)
    sample()
    held_by_a = [m for m in mids if r.get(keys.mission_lock(m)) == ta]
    a.kill()
    def all_done():
        sample()
        return all(mission_state(r, keys, m) == "completed" for m in mids)
    wait_for(all_done, timeout=60, interval=0.05, what="all missions completed after kill -9")
    assert dupes == []
    assert held_by_a
    for m in mids:
        per_item = {}
        for k_ in r.scan_iter(match=keys.pattern("task")):
            t = r.hgetall(k_)
            tags = records.decode_tags(t.get("tags"))
            if f"mission:{m}" in tags:
                w = next(x for x in tags if x.startswith("work-item:"))
                per_item.setdefault(w, []).append(t["state"])
        assert len(per_item) == 4 and all(s.count("completed") == 1 for s in per_item.values())


def _try(fn):
    try:
        return fn()
    except Exception:
        return None
