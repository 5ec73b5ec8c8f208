"""Batch file validation and the progress/summary rendering (no Redis)."""
import io
import json

import pytest

from tinytownd.batch import main as batch, progress


def _bad(data):
    with pytest.raises(batch.BatchFileError) as e:
        batch.parse(data, "b.yaml")
    return str(e.value)


@pytest.mark.parametrize("data,words", [
    ([1, 2], "top level must be a mapping"),
    ({"taks": []}, "did you mean 'tasks'"),
    ({"agents": []}, "tasks: is required"),
    ({"tasks": {}}, "tasks: must be a list"),
    ({"tasks": []}, "tasks: is empty"),
    ({"tasks": [{"id": "a", "description": "x"}, {"id": "a", "description": "y"}]},
     "tasks[1] (id 'a'): duplicate id 'a' (also tasks[0])"),
    ({"tasks": [{"id": "a"}]}, "tasks[0] (id 'a'): description is required"),
    ({"tasks": [{"id": "a", "description": "  "}]}, "description is required"),
    ({"tasks": [{"id": "a", "description": 5}]}, "description must be a string"),
    ({"tasks": [{"id": "a", "description": "x", "rol": "w"}]},
     "tasks[0] (id 'a'): unknown key 'rol' (did you mean 'role'?)"),
    ({"tasks": [{"id": "a", "description": "x", "timeout_s": "soon"}]}, "timeout_s must be a number"),
    ({"tasks": [{"id": "a", "description": "x", "timeout_s": 0}]}, "timeout_s must be > 0"),
    ({"tasks": [{"id": "a", "description": "x", "max_attempts": 0}]}, "max_attempts must be >= 1"),
    ({"tasks": [{"id": "a", "description": "x", "max_attempts": 1.5}]}, "must be an integer"),
    ({"tasks": [{"id": "a", "description": "x", "tags": [1]}]}, "tags must be a list"),
    ({"tasks": [{"id": True, "description": "x"}]}, "tasks[0]: id must be a string"),
    ({"tasks": [{"id": "a b", "description": "x"}]}, "tasks[0]: id 'a b'"),
    ({"tasks": ["ok", 7]}, "tasks[1]: must be a mapping"),
    ({"tasks": ["ok"], "defaults": {"timeout": 3}}, "defaults: unknown key 'timeout'"),
    ({"tasks": ["ok"], "work_items": []}, "either a task list or a mission"),
])
def test_invalid_files_name_the_entry(data, words):
    msg = _bad(data)
    assert msg.startswith("b.yaml: ")
    assert words in msg


def test_valid_file_defaults_and_shorthand():
    bf = batch.parse({"defaults": {"max_attempts": 2, "tags": "a, b"},
                      "tasks": ["first", {"id": 7, "description": "x", "role": "reviewer",
                                          "max_attempts": 5, "timeout_s": 3}]}, "b.yaml")
    assert bf.kind == "tasks"
    assert [t.id for t in bf.tasks] == ["1", "7"]
    assert bf.tasks[0].max_attempts == 2 and bf.tasks[0].tags == ("a", "b")
    assert bf.tasks[1].max_attempts == 5 and bf.tasks[1].timeout_s == 3.0
    assert bf.tasks[1].role == "reviewer"


def test_mission_file_is_recognised():
    bf = batch.parse({"objective": "o", "work_items": [{"id": "a", "title": "A"}]}, "m.yaml")
    assert bf.kind == "mission"


def test_load_reports_yaml_errors(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("tasks: [\n")
    with pytest.raises(batch.BatchFileError) as e:
        batch.load(str(p))
    assert "invalid YAML" in str(e.value)
    with pytest.raises(batch.BatchFileError) as e:
        batch.load(str(tmp_path / "missing.yaml"))
    assert "file not found" in str(e.value)


def test_agent_sections():
    bf = batch.parse({"tasks": ["x"], "agent_clis": {"demo": {"command": "true"}}}, "b.yaml")
    clis, agents = batch.agent_section(bf, agents=None, cli=None)
    assert agents[0]["count"] == 4 and agents[0]["cli"] == "demo"
    clis, agents = batch.agent_section(bf, agents=8, cli="true")
    assert agents[0]["count"] == 8 and clis[agents[0]["cli"]]["command"] == "true"
    with pytest.raises(batch.UsageError):
        batch.agent_section(batch.parse({"tasks": ["x"]}, "b"), agents=2, cli=None)
    with pytest.raises(batch.UsageError, match="did you mean 'claude'"):
        batch.agent_section(bf, agents=None, cli="claud")


def test_check_agents_roles_and_clis():
    bf = batch.parse({"tasks": [{"id": "r", "description": "x", "role": "reviewer"}],
                      "agent_clis": {"demo": "true"},
                      "agents": [{"name": "w", "cli": "demo", "count": 2}]}, "b.yaml")
    clis, agents = batch.agent_section(bf, agents=None, cli=None)
    with pytest.raises(batch.BatchFileError, match=r"tasks\[0\] \(id 'r'\): role 'reviewer'"):
        batch.check_agents(bf, clis, agents)
    bf2 = batch.parse({"tasks": ["x"], "agents": [{"name": "w", "cli": "nope"}]}, "b.yaml")
    with pytest.raises(batch.BatchFileError, match=r"agents\[0\]\.cli"):
        batch.check_agents(bf2, *batch.agent_section(bf2, agents=None, cli=None))


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
                             "running": 0, "queued": 1}
    assert doc["duration_p50_s"] == 1.0 and doc["attempts_total"] == 4
    table = progress.render_table(doc)
    assert "batch B1: 1/3 completed, 1 failed" in table
    lines = table.splitlines()
    assert lines[4].startswith("b ") and "boom" in lines[4]  # failures first


def test_json_progress_lines():
    buf = io.StringIO()
    t = [0.0]
    rep = progress.JsonProgress(buf, interval_s=1.0, clock=lambda: t[0], context={"batch_id": "B"})
    rep.update(progress.Counts(total=10, completed=2, running=3, queued=5))
    t[0] = 0.5
    rep.update(progress.Counts(total=10, completed=3, running=3, queued=4))  # throttled
    t[0] = 2.0
    rep.finish(progress.Counts(total=10, completed=10))
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "batch.progress" and lines[0]["batch_id"] == "B"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["done"] == 10 and lines[1]["eta_s"] == 0.0


def test_tty_bar_renders_counts():
    buf = io.StringIO()
    bar = progress.TtyBar(buf, min_interval_s=0)
    bar.update(progress.Counts(total=4, completed=1, failed=1, running=1, queued=1))
    bar.finish(progress.Counts(total=4, completed=3, failed=1))
    out = buf.getvalue()
    assert "\r[" in out and "ok 1" in out and "failed 1" in out and "running 1" in out
    assert "4/4" in out and out.endswith("\n")
