"""Mission files (compile.py): every problem names the item."""
from __future__ import annotations

import pytest

from tinytownd.missions.compile import MissionFileError, compile_text, known_roles


@pytest.mark.parametrize("text,needle", [
    ("work_items: [{id: a, depends_on: [zz]}]", "work_items[0] 'a': depends_on 'zz' does not exist"),
    ("work_items: [{id: a}, {id: a}]", "duplicate id 'a'"),
    ("work_items: [{id: a, depends_on: [b]}, {id: b, depends_on: [a]}]", "dependency cycle: 'a' -> 'b' -> 'a'"),
    ("work_items: [{id: a, kind: dance}]", "work_items[0] 'a': unknown kind 'dance'"),
    ("work_items: [{id: a, owner_role: wizard}]", "work_items[0] 'a': unknown owner_role 'wizard'"),
    ("work_items: []", "work_items: must be a non-empty list"),
    ("policy: {max_parallel_items: 0}\nwork_items: [{id: a}]", "policy.max_parallel_items"),
])
def test_invalid_files_name_the_item(text, needle):
    with pytest.raises(MissionFileError) as e:
        compile_text(text, "m.yaml", roles=known_roles())
    assert needle in str(e.value)


def test_known_roles():
    roles = known_roles(["Wizard ", None])
    assert {"backend", "frontend", "tester", "reviewer", "devops", "qa", "wizard"} <= roles
    assert compile_text("work_items: [{id: a, owner_role: wizard}]", "m.yaml", roles=roles)


def test_mission_files_that_are_not_text(tmp_path, monkeypatch):
    """A mission file that is not UTF-8, or is over the bound, is a MissionFileError naming the
    problem; a missing one stays FileNotFoundError; a lone surrogate given as text is invalid
    YAML, not a UnicodeEncodeError from libyaml."""
    from tinytownd.missions import compile as mc
    p = tmp_path / "m.yaml"
    p.write_bytes(b"work_items:\n  - id: a\n    title: \"\xff\"\n")
    with pytest.raises(MissionFileError) as e:
        mc.compile_file(str(p))
    assert "not UTF-8 text: byte 0xff at line 3" in str(e.value)
    with pytest.raises(FileNotFoundError):
        mc.compile_file(str(tmp_path / "missing.yaml"))
    monkeypatch.setattr(mc, "MAX_MISSION_FILE_BYTES", 8)
    with pytest.raises(MissionFileError) as e:
        mc.compile_file(str(p))
    assert "larger than 8 bytes" in str(e.value)
    with pytest.raises(MissionFileError) as e:
        compile_text("work_items:\n  - id: \ud800\n")
    assert "invalid YAML" in str(e.value)
