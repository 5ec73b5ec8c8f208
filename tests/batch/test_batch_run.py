"""`tinytownd batch` end to end: the real command, an embedded redis-server, real agent CLIs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.helpers import tinytownd_cmd

# A tiny agent CLI: reads the prompt (stdin), fails when the task says FAIL, else reports.
AGENT = ('p="$(cat)"; echo "START $TINYTOWN_TASK_ID" >> "$BT_LOG"; '
         'case "$p" in *FAIL*) echo "no can do" >&2; exit 3;; esac; '
         'sleep "${BT_SLEEP:-0}"; echo "END $TINYTOWN_TASK_ID" >> "$BT_LOG"; '
         'echo "done by $TINYTOWN_AGENT_NAME"')


def write_batch(path: Path, n: int, *, agents: int = 8, fail: set[int] = frozenset(),
                sleep: float = 0.0, max_attempts: int = 2) -> Path:
    lines = ["agent_clis:",
             f"  t: {{command: {json.dumps(AGENT)}, max_attempts: {max_attempts},",
             f"      env: {{BT_LOG: {json.dumps(str(path.parent / 'agent.log'))}, "
             f"BT_SLEEP: '{sleep}'}}}}",
             f"agents: [{{name: w, role: worker, cli: t, count: {agents}}}]",
             "tasks:"]
    for i in range(n):
        desc = f"task number {i}" + (" FAIL" if i in fail else "")
        lines.append(f"  - {{id: t{i}, description: {json.dumps(desc)}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def batch(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    return subprocess.run(tinytownd_cmd() + ["batch", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def no_leftover_redis(d: Path) -> bool:
    out = subprocess.run(["pgrep", "-af", "redis-server"], capture_output=True, text=True).stdout
    return str(d) not in out


def test_batch_of_100_across_8_agents(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 100, agents=8)
    summ = tmpdir_short / "summary.json"
    p = batch(str(bf), "--id", "B100", "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
              cwd=tmpdir_short)
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
    assert no_leftover_redis(tmpdir_short)


def test_failures_exit_1_with_attempts(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 10, agents=3, fail={2, 7}, max_attempts=2)
    summ = tmpdir_short / "s.json"
    p = batch(str(bf), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
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
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(tinytownd_cmd() + ["batch", str(bf), "--id", "K9", "--dir",
                                               str(run_dir), "--progress", "json"],
                            cwd=tmpdir_short, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
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
    p = batch(str(bf), "--id", "K9", "--dir", str(run_dir), cwd=tmpdir_short)
    assert p.returncode == 2 and "--resume K9" in p.stderr
    summ = tmpdir_short / "s.json"
    p = batch(str(bf), "--resume", "K9", "--dir", str(run_dir), "--summary", str(summ),
              "--progress", "json", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["totals"]["completed"] == n
    assert sorted(t["id"] for t in s["tasks"]) == sorted(f"t{i}" for i in range(n))
    log = (tmpdir_short / "agent.log").read_text().split("\n")
    starts: dict[str, int] = {}
    for line in log:
        if line.startswith("START "):
            starts[line[6:]] = starts.get(line[6:], 0) + 1
    tids = {t["task_id"] for t in s["tasks"]}
    assert set(starts) == tids                    # nothing lost, nothing foreign
    from tinytownd.store.wire import parse_ts
    done_before = [t for t in s["tasks"]
                   if t["state"] == "completed" and t.get("task_id") and
                   _completed_at(run_dir, t) is not None and _completed_at(run_dir, t) < t_kill]
    for t in done_before:                         # completed before the kill: never redone
        assert starts[t["task_id"]] == 1, t
    assert len(done_before) >= 8
    # at most the rounds in flight at the kill ran twice
    assert sum(starts.values()) <= n + 4
    assert parse_ts  # (imported for _completed_at)
    assert no_leftover_redis(tmpdir_short)


def _completed_at(run_dir: Path, t: dict):
    """completed_at of a task from the summary's task hash snapshot (kept in the result rows)."""
    from tinytownd.store.wire import parse_ts
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
    p = batch(str(bf), "--dir", str(tmpdir_short / "run"), cwd=tmpdir_short)
    assert p.returncode == 2, p.stderr
    assert entry in p.stderr and "bad.yaml" in p.stderr
    assert not (tmpdir_short / "run").exists()


def test_usage_errors_exit_2(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    p = batch(str(bf), "--id", "x", "--resume", "x", cwd=tmpdir_short)
    assert p.returncode == 2
    p = batch(str(bf), "--resume", "nope", "--dir", str(tmpdir_short / "none"), cwd=tmpdir_short)
    assert p.returncode == 2 and "no batch 'nope'" in p.stderr
    p = batch(cwd=tmpdir_short)
    assert p.returncode == 2


def test_redis_unavailable_exits_69(tmpdir_short):
    bf = write_batch(tmpdir_short / "b.yaml", 2)
    cfg = tmpdir_short / "c.yaml"
    cfg.write_text(f"town: {{name: t, root: {tmpdir_short}}}\n"
                   f"redis: {{url: 'unix://{tmpdir_short}/nothing.sock'}}\n")
    p = batch(str(bf), "-c", str(cfg), cwd=tmpdir_short)
    assert p.returncode == 69, p.stderr


def test_sigterm_drains_then_resume_finishes(tmpdir_short):
    n = 24
    bf = write_batch(tmpdir_short / "b.yaml", n, agents=3, sleep=0.3)
    run_dir = tmpdir_short / "run"
    summ = tmpdir_short / "s1.json"
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(tinytownd_cmd() + ["batch", str(bf), "--id", "T1", "--dir",
                                               str(run_dir), "--progress", "json",
                                               "--summary", str(summ)],
                            cwd=tmpdir_short, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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
    assert "--resume T1" in err
    p = batch(str(bf), "--resume", "T1", "--dir", str(run_dir), "--summary",
              str(tmpdir_short / "s2.json"), "--progress", "none", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s2 = json.loads((tmpdir_short / "s2.json").read_text())
    assert s2["totals"]["completed"] == n
    starts = (tmpdir_short / "agent.log").read_text().count("START ")
    assert starts == n                             # a drain loses nothing and redoes nothing


def test_submit_to_a_running_daemon(tmpdir_short):
    """-c CONFIG: the tasks go to the daemon's town and its agents run them."""
    root = tmpdir_short / "town"
    root.mkdir()
    log = tmpdir_short / "agent.log"
    cfg = tmpdir_short / "tinytownd.yaml"
    cfg.write_text(f"town: {{name: sub, root: {root}}}\n"
                   "redis: {appendonly: false, save: ''}\n"
                   "logging: {file: daemon.log}\n"
                   f"agent_clis: {{t: {{command: {json.dumps(AGENT)}, "
                   f"env: {{BT_LOG: {json.dumps(str(log))}}}}}}}\n"
                   "agents: [{name: w, role: worker, cli: t, count: 3}]\n")
    bf = tmpdir_short / "b.yaml"
    bf.write_text("tasks:\n" + "".join(f"  - {{id: s{i}, description: 'sub {i}'}}\n"
                                        for i in range(12)))
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    daemon = subprocess.Popen(tinytownd_cmd() + ["run", "-c", str(cfg)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(tinytownd_cmd() + ["status", "-c", str(cfg)], env=env,
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.1)
        summ = tmpdir_short / "s.json"
        p = batch(str(bf), "-c", str(cfg), "--id", "SUB", "--summary", str(summ),
                  "--progress", "json", cwd=tmpdir_short)
        assert p.returncode == 0, p.stderr + p.stdout
        s = json.loads(summ.read_text())
        assert s["totals"]["completed"] == 12 and s["mode"] == "submit"
        assert {t["agent"] for t in s["tasks"]} <= {"w-1", "w-2", "w-3"}
        assert log.read_text().count("START ") == 12
        # the same id again is refused; --resume of a finished batch is a no-op success
        p = batch(str(bf), "-c", str(cfg), "--id", "SUB", cwd=tmpdir_short)
        assert p.returncode == 2 and "--resume SUB" in p.stderr
        p = batch(str(bf), "-c", str(cfg), "--resume", "SUB", "--progress", "none",
                  cwd=tmpdir_short)
        assert p.returncode == 0, p.stderr
        assert log.read_text().count("START ") == 12
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)


def test_fresh_batch_hands_out_tasks_while_the_rest_is_still_being_submitted(redis_server,
                                                                             monkeypatch):
    """A new embedded batch starts dispatching after its first chunk lands: agents get work
    before the whole file is in Redis, and every task is still handed out exactly once."""
    from tinytownd.batch import main as batch
    from tinytownd.store.keys import Keys
    from tinytownd.store.town import Town

    monkeypatch.setattr(batch, "SUBMIT_CHUNK", 10)
    r, k = redis_server.client(), Keys("fb")
    names = ["w1", "w2", "w3"]
    aids = [Town(r, k).register_agent(n) for n in names]
    bf = batch.parse({"tasks": [{"id": f"t{i}", "description": "x"} for i in range(50)]}, "g")
    run = batch.DispatchingBatchRun(bf, "fb1", r, k, agents=[(n, {n}) for n in names])
    run.wait_agents()
    run.start_dispatch(fresh=True)
    queued_at_chunk = []

    def on_chunk(pairs):
        run.feed(pairs)
        queued_at_chunk.append(sum(r.llen(k.inbox(a)) for a in aids))

    new, old = run.submit(on_chunk=on_chunk)
    assert (new, old) == (50, 0) and len(queued_at_chunk) == 5
    assert queued_at_chunk[0] == 3 * batch.PREFETCH      # handed out after the first chunk
    handed = [json.loads(m)["task_id"] for a in aids for m in r.lrange(k.inbox(a), 0, -1)]
    assert len(handed) == len(set(handed)) == 3 * batch.PREFETCH
    assert r.llen(k.backlog) == 50 - len(handed)         # the rest wait in the backlog, in order
    assert r.lrange(k.backlog, 0, -1) == [run.ids[f"t{i}"] for i in range(50)
                                          if run.ids[f"t{i}"] not in handed]
