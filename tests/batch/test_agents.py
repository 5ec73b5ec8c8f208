"""The agents of an embedded batch: config sections, checks, the embedded daemon config."""
import shutil
from pathlib import Path

import pytest

from tinytownd.batch.agents import agent_sections, check_agents, embedded_config, roster
from tinytownd.batch.file import BatchFileError, UsageError, parse


def test_agent_sections():
    bf = parse({"tasks": ["x"], "agent_clis": {"demo": {"command": "true"}}}, "b.yaml")
    clis, agents = agent_sections(bf, agents=None, cli=None)
    assert agents[0]["count"] == 4 and agents[0]["cli"] == "demo"
    assert agents[0]["env"]["TINYTOWND_BATCH_DIR"] == str(Path("b.yaml").absolute().parent)
    clis, agents = agent_sections(bf, agents=8, cli="true")
    assert agents[0]["count"] == 8 and clis[agents[0]["cli"]]["command"] == "true"
    with pytest.raises(UsageError):
        agent_sections(parse({"tasks": ["x"]}, "b"), agents=2, cli=None)
    with pytest.raises(UsageError, match="did you mean 'claude'"):
        agent_sections(bf, agents=None, cli="claud")
    with pytest.raises(UsageError, match="--agents must be >= 1"):
        agent_sections(bf, agents=0, cli=None)


def test_agent_sections_of_a_file_with_agents():
    bf = parse({"tasks": ["x"], "agent_clis": {"a": "true", "b": "false"},
                "agents": [{"name": "w", "cli": "a", "count": 2, "env": {"K": "v"}}]}, "b.yaml")
    _clis, agents = agent_sections(bf, agents=5, cli="b")
    assert agents[0]["count"] == 5 and agents[0]["cli"] == "b"
    assert agents[0]["env"]["K"] == "v" and "TINYTOWND_BATCH_DIR" in agents[0]["env"]
    assert bf.agents[0]["cli"] == "a"                  # the parsed file is left alone
    two = parse({"tasks": ["x"], "agent_clis": {"a": "true"},
                 "agents": [{"name": "w", "cli": "a"}, {"name": "v", "cli": "a"}]}, "b.yaml")
    with pytest.raises(UsageError, match="at most one agents: entry"):
        agent_sections(two, agents=3, cli=None)


def test_check_agents_roles_and_clis():
    bf = parse({"tasks": [{"id": "r", "description": "x", "role": "reviewer"}],
                "agent_clis": {"demo": "true"},
                "agents": [{"name": "w", "cli": "demo", "count": 2}]}, "b.yaml")
    clis, agents = agent_sections(bf, agents=None, cli=None)
    with pytest.raises(BatchFileError, match=r"tasks\[0\] \(id 'r'\): role 'reviewer'"):
        check_agents(bf, clis, agents)
    bf2 = parse({"tasks": ["x"], "agents": [{"name": "w", "cli": "nope"}]}, "b.yaml")
    with pytest.raises(BatchFileError, match=r"agents\[0\]\.cli"):
        check_agents(bf2, *agent_sections(bf2, agents=None, cli=None))


def test_check_agents_tags_follow_the_fit_rule():
    file = {"agent_clis": {"demo": "true"},
            "agents": [{"name": "w", "role": "writer", "cli": "demo", "tags": ["docs"]}]}
    for tags in (["docs"], ["writer"], ["w", "other"]):       # its tag, role or name
        bf = parse({**file, "tasks": [{"id": "a", "description": "x", "tags": tags}]}, "b.yaml")
        check_agents(bf, *agent_sections(bf, agents=None, cli=None))
    bf = parse({**file, "tasks": [{"id": "a", "description": "x", "tags": ["gpu"]}]}, "b.yaml")
    with pytest.raises(BatchFileError, match=r"tasks\[0\] \(id 'a'\): tags \['gpu'\] fit no agent"):
        check_agents(bf, *agent_sections(bf, agents=None, cli=None))


def test_embedded_config(tmp_path):
    bf = parse({"tasks": ["x"], "agent_clis": {"demo": "true"}}, "b.yaml")
    clis, agents = agent_sections(bf, agents=3, cli=None)
    cfg = embedded_config(bf, tmp_path, clis, agents, appendfsync="off")
    assert cfg.town.root == str(tmp_path) and cfg.redis.appendonly is False
    assert cfg.runtime.backlog_claim is False and cfg.missions.enabled is False
    assert [n for n, _w in roster(cfg)] == ["agent-1", "agent-2", "agent-3"]
    assert "role:worker" in roster(cfg)[0][1]
    mission = parse({"objective": "o", "work_items": [{"id": "a", "title": "A"}]}, "m.yaml")
    cfg = embedded_config(mission, tmp_path, clis, agents)
    assert cfg.runtime.backlog_claim is True and cfg.missions.enabled is True
    assert cfg.redis.appendonly is True and cfg.redis.appendfsync == "everysec"


def test_embedded_config_keeps_socket_paths_short(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    bf = parse({"tasks": ["x"], "agent_clis": {"demo": "true"}}, "b.yaml")
    cfg = embedded_config(bf, deep, *agent_sections(bf, agents=1, cli=None))
    try:
        for sock in (str(cfg.redis_socket_path), str(cfg.control_socket_path)):
            assert sock.startswith("/tmp/ttbatch-") and len(sock) <= 100
    finally:
        shutil.rmtree(Path(cfg.redis_socket_path).parent, ignore_errors=True)
    short = embedded_config(bf, tmp_path, *agent_sections(bf, agents=1, cli=None))
    assert str(short.redis_socket_path) == str(tmp_path / "redis.sock")
