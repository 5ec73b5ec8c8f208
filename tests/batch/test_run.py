"""`tinytownd batch` end to end: the real command, an embedded redis-server, real agent CLIs;
and submit mode (-c) against a running daemon."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.support.batch import AGENT, agent_starts, json_lines, run_batch, start_batch, write_batch
from tests.support.leftovers import no_redis_under
from tinytownd.daemon.pidfile import PidFile
from tinytownd.store.wire import parse_ts


def test_batch_of_100_across_8_agents(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 100, agents=8)
    summ = tmpdir_short / "summary.json"
    p = run_batch(str(bf), "--id", "B100", "--dir", str(tmpdir_short / "run"), "--summary",
                  str(summ), cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["batch_id"] == "B100"
    assert s["totals"]["completed"] == 100 and s["totals"]["failed"] == 0
    assert s["totals"]["total"] == 100
    assert [t["id"] for t in s["tasks"]] == [f"t{i}" for i in range(100)]
    agents = set()
    for t in s["tasks"]:
        assert t["state"] == "completed" and t["attempts"] == 1
        assert t["agent"].startswith("w-") and t["result"] == f"done by {t['agent']}"
        assert t["duration_s"] is not None and t["duration_s"] >= 0
        agents.add(t["agent"])
    assert len(agents) > 1                       # the work was spread over the agents
    assert s["duration_p50_s"] is not None and s["duration_p95_s"] >= s["duration_p50_s"]
    assert s["wall_time_s"] > 0
    # the agent ran each task exactly once
    starts = (tmpdir_short / "agent.log").read_text().split()
    assert len([w for w in starts if w == "START"]) == 100
    # not a terminal: progress is JSON lines, first the batch id, last the summary
    lines = json_lines(p.stdout)
    assert lines[0]["event"] == "batch.start" and lines[0]["batch_id"] == "B100"
    prog = [x for x in lines if x["event"] == "batch.progress"]
    assert prog and all({"done", "failed", "running", "queued", "rate_per_s", "eta_s",
                         "timestamp", "level"} <= set(x) for x in prog)
    assert prog[-1]["done"] == 100
    assert lines[-1]["event"] == "batch.summary" and lines[-1]["exit_code"] == 0
    assert "100/100 completed" in p.stderr        # the human table
    assert no_redis_under(tmpdir_short)


def test_failures_exit_1_with_attempts(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 10, agents=3, fail={2, 7}, max_attempts=2)
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  "--progress", "none", cwd=tmpdir_short)
    assert p.returncode == 1, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["totals"]["completed"] == 8 and s["totals"]["failed"] == 2
    by_id = {t["id"]: t for t in s["tasks"]}
    for i in (2, 7):
        t = by_id[f"t{i}"]
        assert t["state"] == "failed" and t["attempts"] == 2
        assert "exit status 3" in t["result"]
    assert all(by_id[f"t{i}"]["attempts"] == 1 for i in range(10) if i not in (2, 7))
    assert "8/10 completed, 2 failed" in p.stdout
    assert p.stdout.index("t2 ") < p.stdout.index("t0 ")  # failures listed first


def test_kill_9_then_resume_completes_each_task_once(tmpdir_short):
    n = 40
    bf = write_batch(tmpdir_short / "b.yaml", n, agents=4, sleep=0.2)
    run_dir = tmpdir_short / "run"
    proc = start_batch(str(bf), "--id", "K9", "--dir", str(run_dir), "--progress", "json",
                       cwd=tmpdir_short, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            d = json.loads(line)
            if d.get("event") == "batch.progress" and d["completed"] >= 8:
                break
            assert time.monotonic() < deadline
        t_kill = time.time()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    # an id in use refuses a fresh start
    p = run_batch(str(bf), "--id", "K9", "--dir", str(run_dir), cwd=tmpdir_short)
    assert p.returncode == 2 and "--resume K9" in p.stderr
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--resume", "K9", "--dir", str(run_dir), "--summary", str(summ),
                  "--progress", "json", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["totals"]["completed"] == n
    assert sorted(t["id"] for t in s["tasks"]) == sorted(f"t{i}" for i in range(n))
    starts = agent_starts(tmpdir_short / "agent.log")
    tids = {t["task_id"] for t in s["tasks"]}
    assert set(starts) == tids                    # nothing lost, nothing foreign
    done_before = [t for t in s["tasks"]
                   if t["state"] == "completed" and t.get("task_id") and
                   _completed_at(t) is not None and _completed_at(t) < t_kill]
    for t in done_before:                         # completed before the kill: never redone
        assert starts[t["task_id"]] == 1, t
    assert len(done_before) >= 8
    # at most the rounds in flight at the kill ran twice
    assert sum(starts.values()) <= n + 4
    assert no_redis_under(tmpdir_short)


def _completed_at(t: dict) -> float | None:
    """completed_at of a summary row, as a Unix time."""
    v = t.get("completed_at")
    return parse_ts(v).timestamp() if v else None


@pytest.mark.parametrize("content,entry", [
    ("tasks:\n  - {id: a, description: x}\n  - {id: a, description: y}\n", "tasks[1] (id 'a')"),
    ("tasks:\n  - {id: a}\n", "tasks[0] (id 'a'): description is required"),
    ("tasks:\n  - {id: a, description: x, priority: 3}\n", "unknown key 'priority'"),
    ("tasks:\n  - {id: a, description: x, max_attempts: many}\n", "max_attempts"),
    ("tasks:\n  - {id: a, description: x}\nagents: [{name: w, cli: nosuch}]\n", "agents[0].cli"),
])
def test_invalid_file_exits_2_naming_the_entry(tmpdir_short, content, entry):
    bf = tmpdir_short / "bad.yaml"
    bf.write_text(content)
    p = run_batch(str(bf), "--dir", str(tmpdir_short / "run"), cwd=tmpdir_short)
    assert p.returncode == 2, p.stderr
    assert entry in p.stderr and "bad.yaml" in p.stderr
    assert not (tmpdir_short / "run").exists()


def test_usage_errors_exit_2(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    p = run_batch(str(bf), "--id", "x", "--resume", "x", cwd=tmpdir_short)
    assert p.returncode == 2
    p = run_batch(str(bf), "--id", "not ok", cwd=tmpdir_short)
    assert p.returncode == 2 and "batch id 'not ok'" in p.stderr
    p = run_batch(str(bf), "--agents", "2", "--cli", "no-such-cli", cwd=tmpdir_short)
    assert p.returncode == 2 and "--cli 'no-such-cli': unknown CLI" in p.stderr
    p = run_batch(str(bf), "--resume", "nope", "--dir", str(tmpdir_short / "none"),
                  cwd=tmpdir_short)
    assert p.returncode == 2 and "no batch 'nope'" in p.stderr
    p = run_batch(cwd=tmpdir_short)
    assert p.returncode == 2


def test_redis_unavailable_exits_69(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    cfg = tmpdir_short / "c.yaml"
    cfg.write_text(f"town: {{name: t, root: {tmpdir_short}}}\n"
                   f"redis: {{url: 'unix://{tmpdir_short}/nothing.sock'}}\n")
    p = run_batch(str(bf), "-c", str(cfg), cwd=tmpdir_short)
    assert p.returncode == 69, p.stderr


def test_sigterm_drains_then_resume_finishes(tmpdir_short):
    n = 24
    bf = write_batch(tmpdir_short / "b.yaml", n, agents=3, sleep=0.3)
    run_dir = tmpdir_short / "run"
    summ = tmpdir_short / "s1.json"
    proc = start_batch(str(bf), "--id", "T1", "--dir", str(run_dir), "--progress", "json",
                       "--summary", str(summ), cwd=tmpdir_short)
    try:
        for line in proc.stdout:
            d = json.loads(line)
            if d.get("event") == "batch.progress" and d["completed"] >= 3:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 75, err
    s = json.loads(summ.read_text())
    assert s["interrupted"] is True and 3 <= s["totals"]["completed"] < n
    assert s["totals"]["running"] == 0            # drained: running rounds finished
    assert "--resume T1" in err and "interrupted (drained)" in err
    p = run_batch(str(bf), "--resume", "T1", "--dir", str(run_dir), "--summary",
                  str(tmpdir_short / "s2.json"), "--progress", "none", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s2 = json.loads((tmpdir_short / "s2.json").read_text())
    assert s2["totals"]["completed"] == n
    starts = (tmpdir_short / "agent.log").read_text().count("START ")
    assert starts == n                             # a drain loses nothing and redoes nothing


def test_submit_to_a_running_daemon(daemon, tmpdir_short):
    """-c CONFIG: the tasks go to the daemon's town and its agents run them."""
    log = tmpdir_short / "agent.log"
    daemon.write(town={"name": "sub"}, redis={"appendonly": False, "save": ""},
                 logging={"file": "daemon.log"},
                 agent_clis={"t": {"command": AGENT, "env": {"BT_LOG": str(log)}}},
                 agents=[{"name": "w", "role": "worker", "cli": "t", "count": 3}])
    bf = tmpdir_short / "b.yaml"
    bf.write_text("tasks:\n" + "".join(f"  - {{id: s{i}, description: 'sub {i}'}}\n"
                                        for i in range(12)))
    daemon.start()
    cfg = str(daemon.cfg_path)
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "-c", cfg, "--id", "SUB", "--summary", str(summ), "--progress", "json",
                  cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["totals"]["completed"] == 12 and s["mode"] == "submit" and s["town"] == "sub"
    assert {t["agent"] for t in s["tasks"]} <= {"w-1", "w-2", "w-3"}
    assert log.read_text().count("START ") == 12
    first = json_lines(p.stdout)[0]
    assert first["event"] == "batch.start" and first["mode"] == "submit"
    # the same id again is refused; --resume of a finished batch is a no-op success
    p = run_batch(str(bf), "-c", cfg, "--id", "SUB", cwd=tmpdir_short)
    assert p.returncode == 2 and "--resume SUB" in p.stderr
    p = run_batch(str(bf), "-c", cfg, "--resume", "SUB", "--progress", "none", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr
    assert log.read_text().count("START ") == 12
    # a role no live agent has is refused up front
    bf.write_text("tasks: [{id: r, description: x, role: reviewer}]\n")
    p = run_batch(str(bf), "-c", cfg, cwd=tmpdir_short)
    assert p.returncode == 2 and "role 'reviewer': no live agent of town 'sub'" in p.stderr
    assert daemon.stop() == 0


def test_submit_without_a_daemon_exits_69(redis_server, tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    cfg = tmpdir_short / "c.yaml"
    cfg.write_text(f"town: {{name: nobody, root: {tmpdir_short}}}\n"
                   f"redis: {{url: '{redis_server.url}'}}\n")
    p = run_batch(str(bf), "-c", str(cfg), cwd=tmpdir_short)
    assert p.returncode == 69, p.stderr
    assert "no tinytownd daemon is running town 'nobody'" in p.stderr
    assert "ignored" in p.stderr                  # the file's agents: do not apply with -c
    assert not redis_server.client().keys("*")    # nothing was submitted


def test_a_batch_directory_in_use_exits_2(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    run_dir = tmpdir_short / "run"
    lock = PidFile(run_dir / "batch.lock").acquire()     # as a running batch holds it
    try:
        p = run_batch(str(bf), "--dir", str(run_dir), cwd=tmpdir_short)
    finally:
        lock.release()
    assert p.returncode == 2, p.stderr
    assert f"batch directory {run_dir} is in use by another process (pid {os.getpid()})" \
        in p.stderr
    assert not (run_dir / "batch.json").exists()         # nothing started
