"""Progress output and summaries: the reporters, their one factory, the summary and its table."""
import io
import json

from tinytownd.batch import progress
from tinytownd.batch.progress import Counts


def test_percentile_and_summary():
    assert progress.percentile([], 50) is None
    assert progress.percentile([3, 1, 2], 50) == 2
    assert progress.percentile(list(range(1, 101)), 95) == 95
    rows = [{"id": "a", "state": "completed", "attempts": 1, "agent": "w-1", "duration_s": 1.0,
             "result": "ok"},
            {"id": "b", "state": "failed", "attempts": 3, "agent": "w-2", "duration_s": 2.0,
             "result": "boom"},
            {"id": "c", "state": "pending", "attempts": 0, "agent": None, "duration_s": None,
             "result": None}]
    doc = progress.summarize("B1", rows, wall_s=4.0)
    assert doc["totals"] == {"total": 3, "completed": 1, "failed": 1, "cancelled": 0,
                             "running": 0, "queued": 1, "cost_usd": 0, "input_tokens": 0,
                             "output_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0,
                             "turns": 0}
    assert doc["duration_p50_s"] == 1.0 and doc["attempts_total"] == 4
    table = progress.render_table(doc)
    assert "batch B1: 1/3 completed, 1 failed" in table
    lines = table.splitlines()
    assert lines[4].startswith("b ") and "boom" in lines[4]  # failures first
    assert "COST" not in table                                # no CLI reported a cost


def test_summary_usage_totals_and_cost_column():
    rows = [{"id": "a", "state": "completed", "attempts": 1, "cost_usd": 0.25,
             "input_tokens": 100, "output_tokens": 10},
            {"id": "b", "state": "completed", "attempts": 2, "cost_usd": 0.5, "input_tokens": 7,
             "turns": 3, "failures": ["rate_limited"]}]
    doc = progress.summarize("B2", rows, wall_s=1.0)
    t = doc["totals"]
    assert t["cost_usd"] == 0.75 and t["input_tokens"] == 107 and t["output_tokens"] == 10
    assert t["turns"] == 3 and t["cached_tokens"] == 0
    table = progress.render_table(doc)
    assert "cost $0.7500, 107 in / 10 out tokens" in table
    assert "COST" in table and "$0.2500" in table


def test_json_progress_lines():
    buf = io.StringIO()
    t = [0.0]
    rep = progress.JsonProgress(buf, interval_s=1.0, clock=lambda: t[0], context={"batch_id": "B"})
    rep.update(Counts(total=10, completed=2, running=3, queued=5))
    t[0] = 0.5
    rep.update(Counts(total=10, completed=3, running=3, queued=4))  # throttled
    t[0] = 2.0
    rep.finish(Counts(total=10, completed=10))
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "batch.progress" and lines[0]["batch_id"] == "B"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["done"] == 10 and lines[1]["eta_s"] == 0.0


def test_tty_bar_renders_counts():
    buf = io.StringIO()
    bar = progress.TtyBar(buf, min_interval_s=0)
    bar.update(Counts(total=4, completed=1, failed=1, running=1, queued=1))
    bar.finish(Counts(total=4, completed=3, failed=1))
    out = buf.getvalue()
    assert "\r[" in out and "ok 1" in out and "failed 1" in out and "running 1" in out
    assert "4/4" in out and out.endswith("\n")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_make_reporter_modes():
    assert isinstance(progress.make_reporter("auto", _Tty()), progress.TtyBar)
    assert isinstance(progress.make_reporter("auto", io.StringIO()), progress.JsonProgress)
    assert isinstance(progress.make_reporter("bar", io.StringIO()), progress.TtyBar)
    assert isinstance(progress.make_reporter("json", _Tty()), progress.JsonProgress)
    assert isinstance(progress.make_reporter("none", _Tty()), progress.Quiet)


def test_json_reporter_start_and_summary(capsys):
    buf = io.StringIO()
    rep = progress.make_reporter("json", buf, context={"batch_id": "B"})
    rep.start("batch B: 2 tasks", batch_id="B", tasks=2)
    rep.summary("the table", exit_code=0)
    first, last = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert first["event"] == "batch.start" and first["tasks"] == 2
    assert last["event"] == "batch.summary" and last["exit_code"] == 0
    assert last["batch_id"] == "B" and last["logger"] == "tinytownd.batch"
    assert capsys.readouterr().err == "the table\n"    # stdout stays JSON


def test_bar_and_quiet_start_and_summary(capsys):
    buf = io.StringIO()
    bar = progress.make_reporter("bar", buf)
    bar.start("batch B: 2 tasks")
    bar.summary("the table")
    assert buf.getvalue() == "batch B: 2 tasks\nthe table\n"
    buf = io.StringIO()
    quiet = progress.make_reporter("none", buf)
    quiet.start("batch B: 2 tasks", batch_id="B")
    quiet.update(Counts(total=2, completed=1))
    quiet.note("SIGTERM: draining")
    quiet.finish(Counts(total=2, completed=2))
    quiet.summary("the table")
    assert buf.getvalue() == "the table\n"              # no progress, the table
    assert capsys.readouterr().err == "batch B: 2 tasks\n"
