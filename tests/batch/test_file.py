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


def test_load_refuses_non_utf8_oversized_and_directories(tmp_path, monkeypatch):
    """Bytes that are not UTF-8, a file over the bound and a directory are each a BatchFileError
    naming the problem (once a UnicodeDecodeError traceback and exit 1)."""
    from tinytownd.batch import file as batch_file
    p = tmp_path / "b.yaml"
    p.write_bytes(b'tasks:\n  - id: a\n    description: "\xff\xfe"\n')
    with pytest.raises(BatchFileError) as e:
        load(str(p))
    assert "not UTF-8 text: byte 0xff at line 3" in str(e.value)
    with pytest.raises(BatchFileError) as e:
        load(str(tmp_path))
    assert "is a directory, not a batch file" in str(e.value)
    p.write_text("\ufefftasks: [one]\n")                 # a BOM is no problem
    assert [t.description for t in load(str(p)).tasks] == ["one"]
    monkeypatch.setattr(batch_file, "MAX_BATCH_FILE_BYTES", 10)
    with pytest.raises(BatchFileError) as e:
        load(str(p))
    assert "larger than 10 bytes" in str(e.value)


def test_batch_cli_exit_code_for_a_non_utf8_file(tmp_path):
    import subprocess
    import sys
    p = tmp_path / "b.yaml"
    p.write_bytes(b"tasks: [\"\xc3\x28\"]\n")
    r = subprocess.run([sys.executable, "-m", "tinytownd", "batch", str(p), "--dir",
                        str(tmp_path / "b"), "--cli", "true"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "not UTF-8 text: byte 0xc3 at line 1" in r.stderr and "Traceback" not in r.stderr
