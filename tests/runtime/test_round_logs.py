"""Round logs are bounded: each round's log (head + tail, the middle dropped and counted) and an
agent's logs together (count and bytes); a daemon that cannot write its prompt file uses no
attempt of the task."""
import os

from tests.support.helpers import wait_for
from tinytownd.runtime import runner
from tinytownd.runtime.round_logs import RoundLogs


def test_a_huge_round_output_keeps_head_and_tail(tmpdir_short):
    log = tmpdir_short / "r.log"
    res = runner.run("head -c 50000000 /dev/zero | tr '\\0' 'a'; echo; echo the-end", prompt="",
                     env=dict(os.environ), cwd=str(tmpdir_short), log_path=str(log),
                     timeout_s=60, tail_bytes=100, log_head_bytes=1000, log_tail_bytes=2000)
    assert res.ok and res.output.endswith("the-end")
    assert res.output_bytes == 50_000_000 + len("\nthe-end\n")
    data = log.read_bytes()
    assert len(data) < 4000 and data.startswith(b"a" * 1000)
    dropped = res.output_bytes - 1000 - 2000
    assert f"[tinytownd: {dropped} bytes of output dropped]".encode() in data
    assert data.endswith(b"the-end\n") and res.log_bytes == len(data)


def test_an_agents_logs_are_bounded_in_count_and_bytes(tmpdir_short):
    for i in range(1, 8):        # logs an earlier daemon left
        (tmpdir_short / f"w_round_{i}.log").write_bytes(b"x" * 100)
    (tmpdir_short / "other_round_1.log").write_bytes(b"y")
    logs = RoundLogs(str(tmpdir_short), "w", kept=5, max_bytes=450)
    assert sorted(p.name for p in tmpdir_short.glob("w_round_*")) == \
        [f"w_round_{i}.log" for i in (4, 5, 6, 7)]            # 450 bytes: four of 100
    p = logs.path(8)
    open(p, "wb").write(b"z" * 300)
    logs.add(p, 300)
    assert sorted(x.name for x in tmpdir_short.glob("w_round_*")) == ["w_round_7.log",
                                                                      "w_round_8.log"]
    assert (tmpdir_short / "other_round_1.log").exists()


def test_unwritable_prompt_file_defers_without_using_an_attempt(harness):
    h = harness([{"name": "w", "cli": "c"}], {"c": "cat >/dev/null; echo ok"},
                runtime={"retry_backoff_s": 0.2})
    aid = wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))
    logs = h.rt.cfg.logs_dir
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")
    if logs.exists():
        for f in logs.iterdir():
            f.unlink()
        logs.rmdir()
    logs.write_text("a file where the logs directory belongs")    # ENOTDIR for the prompt
    tid = h.town.assign(aid, "wait for the disk", max_attempts=1)
    w = h.rt.workers[aid]
    wait_for(lambda: w.problem and "prompt file" in w.problem, 10, what="the round deferred")
    assert h.town.get_task(tid)["state"] == "assigned"
    logs.unlink()
    wait_for(lambda: h.town.get_task(tid)["state"] == "completed", 20, what="the task ran")
    meta = h.town.get_task_meta(tid)
    assert meta["attempts"] == "1"            # the deferred rounds did not count
    assert w.problem is None
