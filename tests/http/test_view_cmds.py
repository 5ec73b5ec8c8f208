"""`tinytownd events` and `tinytownd logs` against a real daemon."""
from __future__ import annotations

import json
import subprocess
import os
import time

from tests.support.helpers import tinytownd_cmd, wait_for
from tests.support.http import web_daemon

SLOW = {"slow": {"command": "echo line-one; sleep 1.5; echo line-two"}}


def test_events_newest_n_filters_and_follow(tmpdir_short):
    d = web_daemon(tmpdir_short, agents=2, http={"listen": None}, cli=SLOW)
    try:
        d.start()
        r = d.redis()
        t1 = d.cli("assign", "w-1", "one").stdout.strip()
        wait_for(lambda: r.hget(f"tt:t:task:{t1}", "state") == "completed", 30, what="t1")
        stream = [json.loads(f["data"]) for _i, f in r.xrange("tt:t:events")]
        out = d.cli("events", "-n", "3", "--json")
        assert out.returncode == 0, out.stderr
        got = [json.loads(x) for x in out.stdout.splitlines()]
        assert [g["message"] for g in got] == [s["message"] for s in stream[-3:]]  # newest 3
        aid = r.hget("tt:t:tinytownd:agent_names", "w-1")
        mine = [json.loads(x) for x in d.cli("events", "-n", "1000", "--json", "--agent",
                                               "w-1").stdout.splitlines()]
        assert mine and all(aid in (e.get("agent_id"), e.get("parent_agent_id")) for e in mine)
        assert len(mine) < len(stream)
        human = d.cli("events", "-n", "2").stdout.splitlines()
        assert len(human) == 2 and "agent_state_changed" in human[-1]
        assert d.cli("events", "--mission", "nope", "--json").stdout == ""
        assert d.cli("events", "-n", "0").returncode == 64
        assert d.cli("events", "-n", "100000").returncode == 64
        assert d.cli("events", "--agent", "ghost").returncode == 65
        # -f: new events as they come
        p = subprocess.Popen(tinytownd_cmd() + ["events", "-c", str(d.cfg_path), "-n", "1", "-f",
                                                "--json"], stdout=subprocess.PIPE, text=True)
        try:
            first = json.loads(p.stdout.readline())
            assert first["id"] == r.xrevrange("tt:t:events", count=1)[0][0]
            t2 = d.cli("assign", "w-2", "two").stdout.strip()
            seen = []
            while not any(e.get("event_type") == "task_completed" for e in seen):
                seen.append(json.loads(p.stdout.readline()))
            assert all(e.get("task_id") in (None, t2) for e in seen)
            assert seen[0]["event_type"] == "task_assigned"
        finally:
            p.terminate()
            p.wait(10)
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_logs_of_task_and_agent_and_follow(tmpdir_short):
    d = web_daemon(tmpdir_short, agents=2, http={"listen": None}, cli=SLOW)
    try:
        d.start()
        r = d.redis()
        tid = d.cli("assign", "w-1", "logged").stdout.strip()
        wait_for(lambda: r.hget(f"tt:t:task:{tid}", "state") == "running", 20, what="running")
        time.sleep(0.2)
        t0 = time.monotonic()
        follow = d.cli("logs", tid, "-f")          # returns when the round ends
        assert follow.returncode == 0, follow.stderr
        assert follow.stdout.splitlines() == ["line-one", "line-two"]
        assert time.monotonic() - t0 > 0.5           # it waited for the second line
        assert d.cli("logs", tid[:8]).stdout.splitlines() == ["line-one", "line-two"]
        assert d.cli("logs", "w-1").stdout.splitlines() == ["line-one", "line-two"]
        assert d.cli("logs", "w-1", "--round", "1").returncode == 0
        bad = d.cli("logs", "w-1", "--round", "9")
        assert bad.returncode == 65 and "has no round 9" in bad.stderr
        assert d.cli("logs", "nobody-at-all").returncode == 65
        assert d.cli("logs", "w-1", "--round", "0").returncode == 64
        # the round's log carries the task id in its name (take_round started it: no Redis write)
        assert os.path.exists(os.path.join(d.root, "logs", f"w-1_round_1_{tid}.log"))
        assert d.stop() == 0
    finally:
        d.cleanup()
