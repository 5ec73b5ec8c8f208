"""Operator commands (real `tinytownd` subprocesses) against a private Redis."""
import json

import pytest

from tests.support.helpers import run_cli
from tests.support.runtime import write_config
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


@pytest.fixture
def env(redis_server, tmpdir_short):
    cfg = write_config(tmpdir_short, redis_server.url, town="ops", agents=[], clis={})
    town = Town(redis_server.client(), Keys("ops"))
    return {"cfg": str(cfg), "town": town, "url": redis_server.url}


def cli(e, *args, env=None):
    return run_cli(*args, "-c", e["cfg"], env={"REDIS_URL": "", "TINYTOWND_CONFIG": "",
                                               **(env or {})})


def jcli(e, *args):
    r = cli(e, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_assign_tasks_agents_inbox(env):
    town = env["town"]
    aid = town.register_agent("worker-1", role="worker")
    r = cli(env, "assign", "worker-1", "do the thing", "--tags", "a, b", "--max-attempts", "2")
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    t = town.get_task(tid)
    assert t["state"] == "assigned" and t["assigned_to"] == aid and t["tags"] == '["a","b"]'
    assert town.get_task_meta(tid)["max_attempts"] == "2"
    agents = jcli(env, "agents")
    assert agents[0]["name"] == "worker-1" and agents[0]["inbox"] == 1
    tasks = jcli(env, "tasks", "--state", "assigned")
    assert [x["id"] for x in tasks] == [tid]
    inbox = jcli(env, "inbox", aid[:4])
    assert inbox[0]["type"] == "task_assign" and inbox[0]["task_id"] == tid
    r = cli(env, "agents")
    assert "worker-1" in r.stdout


def test_send_urgent_and_query(env):
    town = env["town"]
    aid = town.register_agent("w")
    assert cli(env, "send", "w", "hello").returncode == 0
    assert cli(env, "send", "w", "now!", "--urgent").returncode == 0
    assert cli(env, "send", "w", "why?", "--query").returncode == 0
    inbox = jcli(env, "inbox", "w")
    assert [(m["list"], m["type"]) for m in inbox] == [("urgent", "task"), ("inbox", "task"),
                                                       ("inbox", "query")]
    assert town.r.llen(town.keys.urgent(aid)) == 1


def test_task_show_complete_fail(env):
    town = env["town"]
    aid = town.register_agent("w")
    tid = town.assign(aid, "x")
    shown = jcli(env, "task", "show", tid)
    assert shown["id"] == tid and shown["daemon"]["agent"] == aid
    out = jcli(env, "task", "complete", tid, "--result", "fine")
    assert out == {"task": tid, "state": "completed", "changed": True}
    out = jcli(env, "task", "fail", tid, "--result", "late")
    assert out["changed"] is False and out["state"] == "completed"
    assert town.get_task(tid)["result"] == "fine"
    # $TINYTOWN_TASK_ID is the default id; REDIS_URL + TINYTOWN_TOWN work without a config file
    tid2 = town.assign(aid, "y")
    r = run_cli("task", "fail", "--result", "nope",
                env={"TINYTOWND_CONFIG": "/nonexistent/x.yaml", "REDIS_URL": env["url"],
                     "TINYTOWN_TOWN": "ops", "TINYTOWN_TASK_ID": tid2})
    assert r.returncode == 0, r.stderr
    assert town.get_task(tid2)["state"] == "failed"


def test_backlog_add_list(env):
    town = env["town"]
    r = cli(env, "backlog", "add", "later", "--tags", "reviewer")
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    assert town.backlog_list() == [tid]
    listed = jcli(env, "backlog", "list")
    assert listed[0]["id"] == tid and listed[0]["tags"] == '["reviewer"]'


def test_control_commands(env):
    town = env["town"]
    aid = town.register_agent("w")
    town.r.hset(town.keys.agent(aid), "state", "idle")
    assert jcli(env, "interrupt", "w")["state"] == "paused"
    assert jcli(env, "resume", "w")["state"] == "idle"
    assert jcli(env, "close", "w")["state"] == "draining"
    assert town.r.get(town.keys.stop(aid)) == "1"
    assert jcli(env, "kill", "w")["state"] == "stopped"
    r = cli(env, "interrupt", "w")
    assert r.returncode == 65 and "cannot interrupt" in r.stderr
    types = [f["event_type"] for _i, f in town.r.xrange(town.keys.events)]
    assert "agent_interrupted" in types and "agent_resumed" in types
    assert "agent_stopped" in types


def test_deadletter_list_requeue(env):
    town = env["town"]
    aid = town.register_agent("w")
    tid = town.assign(aid, "x")
    raw = town.r.lpop(town.keys.inbox(aid))
    town.fail_task(tid, "gave up")
    town.deadletter("max attempts", town.keys.inbox(aid), raw, task=tid)
    town.deadletter("bad JSON", town.keys.inbox(aid), "{nope")
    dl = jcli(env, "deadletter", "list")
    assert [d["reason"] for d in dl] == ["max attempts", "bad JSON"]
    out = jcli(env, "deadletter", "requeue")
    assert len(out["requeued"]) == 1 and len(out["skipped"]) == 1
    assert town.r.lrange(town.keys.inbox(aid), 0, -1) == [raw]
    assert town.get_task(tid)["state"] == "assigned"
    assert town.get_task_meta(tid)["attempts"] == "0"
    assert len(jcli(env, "deadletter", "list")) == 1


def test_errors_unknown_ambiguous_unavailable(env, tmpdir_short):
    town = env["town"]
    a = town.register_agent("same1")
    b = town.register_agent("same2")
    town.r.hset(town.keys.agent(a), "nickname", "Twin")
    town.r.hset(town.keys.agent(b), "nickname", "Twin")
    r = cli(env, "assign", "nobody", "x")
    assert r.returncode == 65 and "unknown agent 'nobody'" in r.stderr
    r = cli(env, "send", "twin", "x")
    assert r.returncode == 65 and "ambiguous" in r.stderr
    r = cli(env, "task", "show", "5b0c6f7e-1a2b-4c3d-8e9f-0a1b2c3d4e5f")
    assert r.returncode == 65 and "unknown task" in r.stderr
    bad = write_config(tmpdir_short / "x" if (tmpdir_short / "x").mkdir() is None else None,
                       f"unix://{tmpdir_short}/none.sock", town="ops", agents=[], clis={})
    r = run_cli("agents", "-c", str(bad), env={"REDIS_URL": "", "TINYTOWND_CONFIG": ""})
    assert r.returncode == 69 and "cannot connect" in r.stderr
    r = run_cli("agents", "-c", str(tmpdir_short / "missing.yaml"),
                env={"REDIS_URL": "", "TINYTOWND_CONFIG": "", "TINYTOWN_TOWN": ""})
    assert r.returncode == 78


def test_a_refused_assign_applied_nothing_and_says_why(env):
    """Near maxmemory, every assign either applies whole (task, meta, message, event) or not at
    all, and a refusal exits 74 naming it (not 69, "unavailable")."""
    town = env["town"]
    r, k = town.r, town.keys
    aid = town.register_agent("w")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 300_000)
    codes = []
    for i in range(40):
        res = cli(env, "assign", "w", f"task {i} " + "x" * 40_000)
        codes.append(res.returncode)
        if res.returncode:
            assert res.returncode == 74, res.stderr
            assert "out of memory" in res.stderr and "Traceback" not in res.stderr
            break
    assert 74 in codes and codes.index(74) > 0
    r.config_set("maxmemory", 0)
    tasks = [t for t in town.list_tasks()]
    inbox = r.lrange(k.inbox(aid), 0, -1)
    assert len(tasks) == len(inbox) == codes.index(74)     # nothing half-written
    assert {json.loads(m)["task_id"] for m in inbox} == {t["id"] for t in tasks}


def test_task_show_agents_resume_cli_with_usage_and_cli_state(env):
    """`task show` prints the usage summed over attempts and the class of each failed round;
    `agents` the agent's cost and its CLI's pause; `resume-cli` ends it (65 for an unknown CLI)."""
    from tinytownd.store.cli_state import CliState

    town, k = env["town"], env["town"].keys
    aid = town.register_agent("w", role="worker", cli="claude")
    tid = town.assign(aid, "x")
    town.r.hset(k.task_meta(tid), mapping={
        "input_tokens": "1200", "output_tokens": "340", "cost_usd": "0.0123", "turns": "2",
        "model": "claude-sonnet-4-5", "session_id": "s-1", "last_class": "rate_limited",
        "failures": json.dumps([{"class": "rate_limited", "error": "exit status 75",
                                 "at": "2026-12-02T00:00:00Z"},
                                {"class": "error", "error": "exit status 1",
                                 "at": "2026-12-02T00:00:01Z"}])})
    town.r.hset(k.agent_info(aid), mapping={"cost_usd": "0.5", "input_tokens": "10"})
    shown = jcli(env, "task", "show", tid)
    assert shown["usage"] == {"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0123,
                              "turns": 2, "model": "claude-sonnet-4-5", "session_id": "s-1"}
    assert [f["class"] for f in shown["failures"]] == ["rate_limited", "error"]
    r = cli(env, "task", "show", tid)
    assert "usage: $0.0123, 1200 in / 340 out tokens, 2 turns" in r.stdout
    assert "failed round 1: [rate_limited] exit status 75" in r.stdout
    CliState(town.r, k).pause("claude", "Invalid API key")
    agents = jcli(env, "agents")
    assert agents[0]["usage"]["cost_usd"] == 0.5
    assert agents[0]["cli_state"]["paused"] and agents[0]["cli_state"]["paused_reason"] == \
        "Invalid API key"
    r = cli(env, "agents")
    assert "PAUSED (Invalid API key)" in r.stdout and "$0.5000" in r.stdout
    r = cli(env, "resume-cli", "claude")
    assert r.returncode == 0 and "resumed (was paused: Invalid API key)" in r.stdout
    assert not town.r.exists(k.cli("claude"))
    r = cli(env, "resume-cli", "claude")
    assert r.returncode == 0 and "neither paused nor cooling down" in r.stdout
    r = cli(env, "resume-cli", "nope")
    assert r.returncode == 65 and "unknown agent CLI 'nope'" in r.stderr
