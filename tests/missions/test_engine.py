"""MissionEngine against a real redis-server, with agent doubles driving tasks through Town."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import gevent

from tests.support.helpers import ROOT, stop_process
from tests.support.missions import (DIAMOND, DIAMOND_ORDER, ONE_ITEM, fake_gh, hold_lease, live_tasks_by_item, mission_state,
                                    wait_for)
from tinytownd.missions.validate import (validate_control, validate_mission, validate_watch,
                                         validate_work)
from tinytownd.store import records, validate
from tinytownd.store.wire import SUPERVISOR_ID

TOWN = "mt"


def validate_all(e, mid):
    snap = e.store.load(mid)
    raw = e.r.get(e.keys.mission(mid))
    assert validate_mission(raw) == []
    for v in e.r.hvals(e.keys.mission_work(mid)):
        assert validate_work(v) == []
    for v in e.r.hvals(e.keys.mission_watch(mid)):
        assert validate_watch(v) == []
    for v in e.r.hvals(e.keys.mission_control(mid)):
        assert validate_control(v) == []
    for line in e.r.lrange(e.keys.mission_log(mid), 0, -1):
        assert line.startswith("[") and line[20:22] == "] "
    assert e.r.llen(e.keys.mission_log(mid)) <= 100
    for tid in [t for t in e.r.scan_iter(match=e.keys.pattern("task"))]:
        assert validate.validate_task(e.r.hgetall(tid)) == []
    return snap


def test_diamond_completes_in_order_within_parallel_limit(env):
    log = []
    env.agent("w1", log=log)
    env.agent("w2", log=log)
    env.agent("w3", log=log)
    env.engine()
    c = env.start(DIAMOND)
    mid = c.mission.id
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "completed", what="completion")
    # concurrency never above max_parallel_items; dependency order respected
    fid = {v: k for k, v in c.file_ids.items()}
    tid_item = {}
    for ev in log:
        t = env.town.get_task(ev[2])
        tags = records.decode_tags(t["tags"])
        tid_item[ev[2]] = fid[next(x[10:] for x in tags if x.startswith("work-item:"))]
    running, peak, start, end = 0, 0, {}, {}
    for kind, _, tid, at in sorted(log, key=lambda x: (x[3], x[0] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
        (start if kind == "start" else end)[tid_item[tid]] = at
    assert peak <= 2 and sorted(start) == list("abcdef")
    for x, deps in DIAMOND_ORDER.items():
        assert all(end[d] <= start[x] for d in deps), (x, deps)
    assert not env.r.sismember(env.keys.missions_active, mid)
    assert len(log) == 12        # exactly one task per item
    validate_all(env, mid)


def test_role_routing(env):
    be = env.agent("backend-worker", role=None)
    te = env.agent("qa-tester", role="tester")
    rv = env.agent("rev", role="reviewer")
    env.engine()
    c = env.start("""
policy: {max_parallel_items: 3, reviewer_required: false}
work_items:
  - {id: impl, kind: implement}
  - {id: tests, kind: test}
  - {id: rev, kind: review, owner_role: reviewer}
""")
    wait_for(lambda: mission_state(env.r, env.keys, c.mission.id) == "completed")
    who = {}
    for ag in (be, te, rv):
        for ev in ag.log:
            if ev[0] == "start":
                t = env.town.get_task(ev[2])
                wid = next(x[10:] for x in records.decode_tags(t["tags"])
                           if x.startswith("work-item:"))
                who[{v: k for k, v in c.file_ids.items()}[wid]] = ag.name
    assert who == {"impl": "backend-worker", "tests": "qa-tester", "rev": "rev"}


def test_failing_item_retried_then_blocked_and_escalated(env):
    env.agent("w1", behave=lambda t: ("failed", "compiler exploded", 0.01))
    env.engine()
    c = env.start("""
policy: {reviewer_required: false, max_attempts: 3}
work_items: [{id: only, title: Flaky}]
""")
    mid = c.mission.id
    wid = c.file_ids["only"]

    def blocked():
        it = env.store.load(mid).items[wid]
        return it.status == "blocked"
    wait_for(blocked, what="item blocked after retries")
    meta = env.r.hgetall(env.keys.mission_meta(mid))
    assert meta[f"attempts:{wid}"] == "3" and meta[f"exhausted:{wid}"] == "3"
    raws = env.r.lrange(env.keys.inbox(SUPERVISOR_ID), 0, -1)
    assert all(validate.validate_message(x) == [] for x in raws)
    inbox = [json.loads(x) for x in raws]
    helps = [m for m in inbox if m["type"] == "query" and
             m["question"].startswith(f"[Mission Help Needed] Mission {mid}")]
    assert len(helps) == 1 and "compiler exploded" in helps[0]["question"]
    assert mission_state(env.r, env.keys, mid) == "running"
    events = env.r.lrange(env.keys.mission_log(mid), 0, -1)
    assert sum("retrying" in e for e in events) == 2
    validate_all(env, mid)


def test_pause_resume_redirect_via_cli_notes(env, tmp_path):
    from tests.support.helpers import run_cli
    cfgp = tmp_path / "t.yaml"
    cfgp.write_text(f"town: {{name: {TOWN}, root: {tmp_path}}}\nredis: {{url: '{env.url}'}}\n")
    gate = gevent.event.Event()
    slow = env.agent("slow", behave=lambda t: (gate.wait(30) and False) or
                     ("completed", "ok", 0))
    fast = env.agent("fast")
    fast.pause()                    # busy with something else for now
    env.town.set_agent_state(fast.aid, "working", event=False)
    env.engine()
    c = env.start("""
policy: {reviewer_required: false, max_parallel_items: 1}
work_items: [{id: x, title: X}, {id: y, title: Y, depends_on: [x]}]
""")
    mid = c.mission.id
    wait_for(lambda: slow.log, what="slow agent started x")
    p = run_cli("mission", "pause", mid, "-c", str(cfgp))
    assert p.returncode == 0, p.stderr
    assert mission_state(env.r, env.keys, mid) == "blocked"
    p = run_cli("mission", "pause", mid, "-c", str(cfgp))
    assert p.returncode == 65 and "only a running mission" in p.stderr
    p = run_cli("mission", "resume", mid[:8], "-c", str(cfgp))
    assert p.returncode == 0 and "blocked -> running" in p.stdout
    # redirect x from the stuck agent to `fast`
    fast.resume()
    env.town.set_agent_state(fast.aid, "idle", event=False)
    p = run_cli("mission", "note", mid, "redirect x to fast slow agent is stuck", "-c", str(cfgp))
    assert p.returncode == 0, p.stderr
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "completed", what="completion")
    events = "\n".join(env.r.lrange(env.keys.mission_log(mid), 0, -1))
    assert "Redirected work item 'X' to 'fast'; cancelled 1 superseded" in events
    gate.set()
    p = run_cli("mission", "note", "nope-nope", "hi", "-c", str(cfgp))
    assert p.returncode == 65 and "unknown mission" in p.stderr
    p = run_cli("mission", "status", mid, "--work", "--json", "-c", str(cfgp))
    st = json.loads(p.stdout)
    assert st["state"] == "completed" and [w["status"] for w in st["work"]] == ["done", "done"]
    validate_all(env, mid)


def test_command_watch_and_fake_gh(env, tmp_path):
    gh = fake_gh(tmp_path / "gh", {
        "o/r#5": {"statusCheckRollup": [{"name": "ci", "status": "IN_PROGRESS",
                                          "conclusion": ""}],
                  "mergeable": "MERGEABLE", "reviewDecision": "", "latestReviews": [],
                  "comments": [], "commits": []}})
    flag = tmp_path / "done.flag"
    env.agent("w1", behave=lambda t: ("completed",
                                      "opened https://github.com/o/r/pull/5"
                                      if "PR item" in t["description"] else "ok", 0.01))
    env.engine(gh=str(gh))
    c = env.start(textwrap.dedent(f"""
    policy: {{reviewer_required: false, watch_interval_secs: 0}}
    work_items:
      - {{id: cmd, title: Cmd item, watches: [{{command: "test -f {flag}", interval_secs: 0}}]}}
      - {{id: pr, title: PR item}}
    """))
    mid = c.mission.id
    wait_for(lambda: len(env.r.hkeys(env.keys.mission_watch(mid))) == 4, what="PR watches")
    gevent.sleep(0.5)
    snap = env.store.load(mid)
    assert snap.items[c.file_ids["cmd"]].status == "blocked"      # waiting on its command watch
    assert snap.items[c.file_ids["pr"]].status == "blocked"       # CI in progress = pending
    flag.write_text("x")
    wait_for(lambda: env.store.load(mid).items[c.file_ids["cmd"]].status == "done",
             what="command watch")
    (tmp_path / "gh" / "prs" / "o_r_5").write_text(json.dumps(
        {"statusCheckRollup": [{"name": "ci", "status": "COMPLETED", "conclusion": "SUCCESS"}],
         "mergeable": "MERGEABLE", "reviewDecision": "APPROVED", "latestReviews": [],
         "comments": [], "commits": []}))
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "completed", what="PR watches done")
    calls = (tmp_path / "gh" / "calls.log").read_text().splitlines()
    assert all(c_.startswith("pr view 5 --repo o/r") for c_ in calls)
    validate_all(env, mid)


def test_restart_resumes_without_duplicate_assignment(env):
    log = []
    env.agent("w1", log=log, behave=lambda t: ("completed", "ok", 0.3))
    env.agent("w2", log=log, behave=lambda t: ("completed", "ok", 0.3))
    h = env.engine()
    c = env.start(DIAMOND)
    mid = c.mission.id
    wait_for(lambda: sum(1 for x in log if x[0] == "end") >= 2, what="some progress")
    h.stop()                        # graceful: releases the lease
    h2 = env.engine()
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "completed", what="completion")
    starts = [x for x in log if x[0] == "start"]
    assert len(starts) == 6
    items = [records.decode_tags(env.town.get_task(x[2])["tags"]) for x in starts]
    assert len({next(t for t in tags if t.startswith("work-item:")) for tags in items}) == 6


def test_two_engines_ten_missions_kill9(env, tmp_path):
    for i in range(4):
        env.agent(f"w{i}", behave=lambda t: ("completed", "ok", 0.15))
    code = ("from gevent import monkey; monkey.patch_all();"
            "from tests.support.missions import _engine_main; import sys;"
            "_engine_main(*sys.argv[1:4])")
    procs = [subprocess.Popen([sys.executable, "-c", code, env.url, TOWN, "3"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=open(tmp_path / f"e{i}.log", "w"),
                              text=True) for i in range(2)]
    try:
        tokens = []
        for p in procs:
            word, token = p.stdout.readline().split()
            assert word == "ready"
            tokens.append(token)
        wait_for(lambda: env.r.zcard(env.keys.mission_engines) == 2, what="engines registered")
        mids = [env.start(DIAMOND).mission.id for _ in range(10)]
        # both engines take a share
        wait_for(lambda: len({env.r.get(env.keys.mission_lock(m)) for m in mids
                              if mission_state(env.r, env.keys, m) == "running"} - {None}) == 2,
                 timeout=15, what="missions split between the engines")
        seen_dupes = []

        def check():
            for w, ts in live_tasks_by_item(env.r, env.keys).items():
                if len(ts) > 1:
                    seen_dupes.append((w, ts))
        check()
        victims = [m for m in mids if env.r.get(env.keys.mission_lock(m)) == tokens[0]
                   and mission_state(env.r, env.keys, m) == "running"]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(5)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            check()
            if all(mission_state(env.r, env.keys, m) == "completed" for m in mids):
                break
            gevent.sleep(0.05)
        assert [m for m in mids if mission_state(env.r, env.keys, m) != "completed"] == []
        assert seen_dupes == []
        assert victims, "the killed engine held no unfinished mission"
        assert all(env.r.get(env.keys.mission_lock(m)) in (None, tokens[1]) for m in victims)
    finally:
        for p in procs:
            stop_process(p)


def _one_item_mission_owned_by(env, eng) -> str:
    """A started one-item mission whose lease `eng` holds (ticks run on it by hand)."""
    mid = env.start(ONE_ITEM).mission.id
    hold_lease(eng, mid)
    return mid


def test_concurrent_operator_stop_is_never_overwritten(env):
    """A stop landing between the tick's read and its EXEC aborts the EXEC (WATCH); the tick is
    computed again on fresh data and the mission stays stopped."""
    env.agent("w1", behave=lambda t: ("completed", "ok", 5))
    h = env.engine(run=False)
    eng = h.engine
    mid = _one_item_mission_owned_by(env, eng)
    real = eng.io.compute
    calls = []

    def racing(m, *args):
        out = real(m, *args)
        if not calls:
            def stop(mm, p):
                mm.block("Stopped by user")
                p.srem(env.keys.missions_active, mid)
            env.store.update_mission(mid, stop)       # the operator, concurrently
        calls.append(1)
        return out
    eng.io.compute = racing
    eng.tick(mid)
    assert len(calls) == 2 and eng.stats["tx_conflicts"] == 1
    m = env.store.get_mission(mid)
    assert m.state == "blocked" and m.blocked_reason == "Stopped by user"
    assert live_tasks_by_item(env.r, env.keys) == {}    # the stopped mission got no task


def test_lost_lease_stops_writes_at_once(env):
    h = env.engine(run=False)
    eng = h.engine
    mid = _one_item_mission_owned_by(env, eng)
    env.r.set(env.keys.mission_lock(mid), "someone-else")     # e.g. `tt mission dispatch`
    before = env.r.get(env.keys.mission(mid))
    eng.tick(mid)
    assert env.r.get(env.keys.mission(mid)) == before
    assert mid not in eng.owned and eng.stats["lease_lost"] == 1
    assert env.r.get(env.keys.mission_lock(mid)) == "someone-else"   # not released by us
    assert not eng.leases.renew(mid) and not eng.leases.release(mid)


def test_task_bound_by_tt_is_adopted_not_duplicated(env):
    """A live work task created by someone else (tt's unlocked CLI tick) is found when the engine
    acquires the mission: the item is reconciled to it and gets no second task."""
    c = env.start(ONE_ITEM)
    mid, wid = c.mission.id, c.file_ids["x"]
    w = env.agent("w1", behave=lambda t: ("completed", "ok", 0.3))
    w.pause()
    tid = env.town.assign(w.aid, "[Mission Work Item] X", tags=[
        "mission-work-item", "mission-task:work", f"mission:{mid}", f"work-item:{wid}"])
    env.town.set_agent_state(w.aid, "idle", event=False)
    env.engine()
    wait_for(lambda: env.store.load(mid).items[wid].status == "assigned", what="reconciled")
    assert env.store.load(mid).items[wid].assigned_to == w.aid
    assert live_tasks_by_item(env.r, env.keys) == {wid: [tid]}
    w.resume()
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "completed")
    assert live_tasks_by_item(env.r, env.keys) == {}


def test_engine_survives_redis_restart(env, redis_server):
    h = env.engine()
    env.agent("w1")
    c = env.start(ONE_ITEM)
    wait_for(lambda: mission_state(env.r, env.keys, c.mission.id) == "completed")
    redis_server.stop()                       # Redis goes away (no persistence in tests)
    gevent.sleep(1.5)                         # the engine's loops see errors and back off
    redis_server.start()
    env.agent("w2")                           # agent records were lost with the data
    c2 = env.start("""
policy: {reviewer_required: false}
work_items: [{id: y, title: Y}, {id: z, title: Z, depends_on: [y]}]
""")
    wait_for(lambda: mission_state(env.r, env.keys, c2.mission.id) == "completed", timeout=30,
             what="mission completed after the Redis restart")
    assert all(g.dead is False for g in h.greenlets)
