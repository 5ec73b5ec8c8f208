"""The batch file schema: parse/load, and errors that name the offending entry (no Redis)."""
import pytest

from tinytownd.batch.file import BatchFileError, load, parse


def _bad(data):
    with pytest.raises(BatchFileError) as e:
        parse(data, "b.yaml")
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
    ({"tasks": ["ok"], "defaults": "x"}, "defaults: must be a mapping"),
    ({"tasks": ["ok"], "name": 3}, "name: must be a string"),
    ({"tasks": ["ok"], "work_items": []}, "either a task list or a mission"),
    ({"objective": "o", "work_items": [], "priority": 1}, "priority: unknown key"),
])
def test_invalid_files_name_the_entry(data, words):
    msg = _bad(data)
    assert msg.startswith("b.yaml: ")
    assert words in msg


def test_valid_file_defaults_and_shorthand():
    bf = parse({"defaults": {"max_attempts": 2, "tags": "a, b"},
                "tasks": ["first", {"id": 7, "description": "x", "role": "reviewer",
                                    "max_attempts": 5, "timeout_s": 3}]}, "b.yaml")
    assert bf.kind == "tasks" and bf.size() == 2
    assert [t.id for t in bf.tasks] == ["1", "7"]
    assert bf.tasks[0].max_attempts == 2 and bf.tasks[0].tags == ("a", "b")
    assert bf.tasks[1].max_attempts == 5 and bf.tasks[1].timeout_s == 3.0
    assert bf.tasks[1].role == "reviewer"
    assert bf.tasks[1].entry() == "tasks[1] (id '7')"
    assert set(bf.by_id()) == {"1", "7"}


def test_digest_follows_the_content():
    a = parse({"tasks": ["x", "y"]}, "a.yaml")
    assert parse({"tasks": ["x", "y"]}, "elsewhere.yaml").digest == a.digest
    assert parse({"tasks": ["x", "z"]}, "a.yaml").digest != a.digest


def test_mission_file_is_recognised():
    bf = parse({"objective": "o", "work_items": [{"id": "a", "title": "A"}],
                "agent_clis": {"t": "true"}}, "m.yaml")
    assert bf.kind == "mission" and bf.size() == 1 and bf.tasks == []
    assert "agent_clis" not in bf.mission and bf.agent_clis == {"t": "true"}


def test_load_reports_yaml_errors(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("tasks: [\n")
    with pytest.raises(BatchFileError) as e:
        load(str(p))
    assert "invalid YAML" in str(e.value) and "line " in str(e.value)
    with pytest.raises(BatchFileError) as e:
        load(str(tmp_path / "missing.yaml"))
    assert "file not found" in str(e.value)
    p.write_text("tasks: [one, two]\n")
    assert [t.description for t in load(str(p)).tasks] == ["one", "two"]
