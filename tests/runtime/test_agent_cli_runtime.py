"""Agent CLIs in a running town (real redis-server, real subprocesses): structured output and
usage recorded on the task, the agent and summed over attempts; rate limits that give the
attempt back and cool the CLI down for every agent of it, on every daemon of the Redis; fatal
errors that pause the CLI for the town; inactivity timeouts."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gevent
import pytest

from tests.support.runtime import Harness, wait_for, write_config
from tinytownd.store.cli_state import CliState

FAKE = Path(__file__).resolve().parents[1] / "fake_clis" / "fake_agent.py"


def fake(*args: str) -> str:
    return f"{sys.executable} {FAKE} " + " ".join(args)


def task_state(h, tid):
    return (h.town.get_task(tid) or {}).get("state")


def first_aid(h, name=None):
    if name:
        def find():
            try:
                return h.town.resolve_agent(name)
            except LookupError:
                return None
        return wait_for(find)
    return wait_for(lambda: h.rt.workers and next(iter(h.rt.workers)))


def test_claude_json_result_and_usage_recorded(harness):
    h = harness([{"name": "c", "cli": "cl"}],
                {"cl": {"command": fake("--print claude_success.json"), "output": "claude-json"}})
    aid = first_aid(h)
    t1, t2 = h.town.assign(aid, "one"), h.town.assign(aid, "two")
    wait_for(lambda: task_state(h, t2) == "completed")
    assert h.town.get_task(t1)["result"] == "Hello CLI Test"
    meta = h.town.get_task_meta(t1)
    assert meta["input_tokens"] == "1200" and meta["output_tokens"] == "340"
    assert meta["cached_tokens"] == "800" and float(meta["cost_usd"]) == pytest.approx(0.0123)
    assert meta["turns"] == "1" and meta["model"] == "claude-sonnet-4-5-20250929"
    assert meta["session_id"] == "3f0b7c2e-6d0a-4a5e-9a51-1c2d3e4f5a6b"
    info = h.town.r.hgetall(h.keys.agent_info(aid))
    assert info["input_tokens"] == "2400" and float(info["cost_usd"]) == pytest.approx(0.0246)
    agent = wait_for(lambda: next((a for a in h.rt.status()["agents"]
                                   if a["usage"].get("input_tokens") == 2400), None))
    assert agent["usage"]["cost_usd"] == pytest.approx(0.0246)


def test_codex_jsonl_and_failure_classes(harness, tmpdir_short):
    counter = tmpdir_short / "n"
    h = harness([{"name": "x", "cli": "cx"}],
                {"cx": {"command": fake(f"--counter {counter}", "--first",
                                        "1:codex_turn_failed.jsonl:1",
                                        "--print codex_success.jsonl",
                                        "--usage '{\"cost_usd\": 0.25, \"model\": \"gpt-x\"}'"),
                        "output": "codex-jsonl", "max_attempts": 3}})
    aid = first_aid(h)
    tid = h.town.assign(aid, "do it")
    wait_for(lambda: task_state(h, tid) == "completed", timeout=30)
    assert h.town.get_task(tid)["result"] == "Done. I updated the docs and added examples."
    meta = h.town.get_task_meta(tid)
    assert meta["attempts"] == "2"
    assert float(meta["cost_usd"]) == pytest.approx(0.5)         # both attempts' usage files
    assert meta["input_tokens"] == "24763" and meta["model"] == "gpt-x"
    failures = json.loads(meta["failures"])
    assert [f["class"] for f in failures] == ["error"]
    assert "model response stream ended unexpectedly" in failures[0]["error"]


def test_malformed_structured_output_fails_the_round(harness):
    h = harness([{"name": "m", "cli": "bad"}],
                {"bad": {"command": "cat >/dev/null; echo 'Hello, not JSON'",
                         "output": "claude-json", "max_attempts": 1}})
    aid = first_aid(h)
    tid = h.town.assign(aid, "x")
    wait_for(lambda: task_state(h, tid) == "failed")
    assert "not claude-json" in h.town.get_task(tid)["result"]
    assert h.town.get_task_meta(tid)["last_class"] == "error"
    wait_for(lambda: h.town.get_agent(aid)["state"] == "idle")     # the agent lives on


def test_inactivity_timeout(harness):
    h = harness([{"name": "i", "cli": "hang"}],
                {"hang": {"command": fake("--hang"), "inactivity_timeout_s": 0.5,
                          "timeout_s": 60, "max_attempts": 1}})
    aid = first_aid(h)
    tid = h.town.assign(aid, "x")
    wait_for(lambda: task_state(h, tid) == "failed", timeout=30)
    meta = h.town.get_task_meta(tid)
    assert meta["last_class"] == "timeout" and "inactivity" in meta["last_error"]


class CooldownWatch:
    """Samples the CLI's state hash; the cooldowns seen, as (start, end) epoch seconds."""

    def __init__(self, r, key):
        self.seen: dict[str, tuple[float, float]] = {}
        self.g = gevent.spawn(self._run, r, key)

    def _run(self, r, key):
        while True:
            h = r.hgetall(key)
            if h.get("cooldown_at"):
                self.seen[h["cooldown_at"]] = (int(h["cooldown_at"]) / 1000,
                                               int(h["cooldown_until"]) / 1000)
            gevent.sleep(0.02)

    def stop(self):
        self.g.kill()
        return sorted(self.seen.values())


def _starts(record: Path) -> list[tuple[float, str]]:
    return [(float(t), who) for what, t, who in
            (ln.split() for ln in record.read_text().splitlines()) if what == "start"]


@pytest.mark.parametrize("daemons", [1, 2])
def test_rate_limits_use_no_attempt_and_cool_the_cli_down_everywhere(redis_server, tmpdir_short,
                                                                     daemons):
    """A CLI that prints a 429 three times, then succeeds: its tasks complete with one attempt
    each, no round of it starts during a cooldown (whichever daemon runs the agent), and
    another CLI keeps working meanwhile."""
    counter, rec, other_rec = tmpdir_short / "n", tmpdir_short / "rec", tmpdir_short / "orec"
    clis = {"rl": {"command": fake(f"--counter {counter} --record {rec}", "--first",
                                   "3:codex_rate_limited.jsonl:1", "--print codex_success.jsonl"),
                   "output": "codex-jsonl", "cooldown_s": 1, "cooldown_max_s": 2,
                   "rate_limit_patterns": ["too many requests"]},
            "other": {"command": fake(f"--record {other_rec} --sleep 0.1")}}
    rl_agents = [{"name": "rl-a", "cli": "rl"}, {"name": "rl-b", "cli": "rl"}]
    other = [{"name": "o", "cli": "other"}]
    if daemons == 1:
        layouts = [rl_agents + other]
    else:
        layouts = [rl_agents[:1] + other, rl_agents[1:]]
    hs = []
    try:
        for i, agents in enumerate(layouts):
            root = tmpdir_short / f"d{i}"
            root.mkdir()
            hs.append(Harness(write_config(root, redis_server.url, agents=agents,
                                           clis=clis)).start())
        h = hs[0]
        watch = CooldownWatch(h.town.r, h.keys.cli("rl"))
        aids = [first_aid(h, n) for n in ("rl-a", "rl-b", "o")]
        tids = [h.town.assign(aids[i % 2], f"rl {i}") for i in range(4)]
        others = [h.town.assign(aids[2], f"other {i}") for i in range(30)]
        wait_for(lambda: all(task_state(h, t) == "completed" for t in tids), timeout=90)
        cooldowns = watch.stop()
        for t in tids:
            meta = h.town.get_task_meta(t)
            assert meta["attempts"] == "1", meta
        classes = [f["class"] for t in tids
                   for f in json.loads(h.town.get_task_meta(t).get("failures") or "[]")]
        assert classes == ["rate_limited"] * 3
        assert len(cooldowns) >= 2
        starts = _starts(rec)
        assert {who for _t, who in starts} == {"rl-a", "rl-b"}
        for t, who in starts:     # a take before the cooldown began may start just after it
            for begin, end in cooldowns:
                assert not (begin + 0.3 < t < end), (who, t, begin, end)
        other_starts = [t for t, _w in _starts(other_rec)]
        assert any(begin < t < end for t in other_starts for begin, end in cooldowns)
        wait_for(lambda: all(task_state(h, t) == "completed" for t in others), timeout=60)
    finally:
        for x in hs:
            x.stop()


def test_retry_after_sets_the_cooldown_status_shows_it_resume_ends_it(harness, tmpdir_short):
    counter = tmpdir_short / "n"
    h = harness([{"name": "c", "cli": "cl"}],
                {"cl": {"command": fake(f"--counter {counter}", "--first",
                                        "1:claude_rate_limited.json:1",
                                        "--print claude_success.json"),
                        "output": "claude-json", "rate_limit_patterns": ["rate_limit_error"]}})
    aid = first_aid(h)
    tid = h.town.assign(aid, "x")
    key = h.keys.cli("cl")
    wait_for(lambda: h.town.r.hget(key, "cooldown_until"))
    st = h.town.r.hgetall(key)
    assert int(st["cooldown_until"]) - int(st["cooldown_at"]) == 7000
    assert float(st["cooldown_s"]) == 7.0
    assert "rate_limit_error" in st["cooldown_reason"]
    status = wait_for(lambda: (s := h.rt.status()).get("clis", {}).get("cl") and s)
    assert status["clis"]["cl"]["cooldown_left_s"] > 0
    assert task_state(h, tid) != "completed"
    assert h.town.get_task_meta(tid)["attempts"] == "0"
    CliState(h.town.r, h.keys).resume("cl")
    wait_for(lambda: task_state(h, tid) == "completed", timeout=20)
    assert h.town.get_task_meta(tid)["attempts"] == "1"


def test_fatal_fails_the_task_at_once_and_pauses_the_cli_for_the_town(harness, tmpdir_short):
    counter = tmpdir_short / "n"
    h = harness([{"name": "f", "cli": "auth", "count": 2}, {"name": "o", "cli": "ok"}],
                {"auth": {"command": fake(f"--counter {counter}", "--first",
                                          "1:claude_auth_failed.txt:1"), "max_attempts": 3,
                          "fatal_patterns": ["invalid api key"]},
                 "ok": "cat >/dev/null; echo fine"})
    a1, a2, o = (first_aid(h, n) for n in ("f-1", "f-2", "o"))
    t1 = h.town.assign(a1, "first")
    wait_for(lambda: task_state(h, t1) == "failed")
    meta = h.town.get_task_meta(t1)
    assert meta["attempts"] == "1" and meta["last_class"] == "fatal"
    assert "Invalid API key" in h.town.get_task(t1)["result"]
    st = h.town.r.hgetall(h.keys.cli("auth"))
    assert st["paused"] == "1" and "Invalid API key" in st["paused_reason"]
    later = [h.town.assign(a, "later") for a in (a1, a2)]
    t_ok = h.town.assign(o, "other cli")
    wait_for(lambda: task_state(h, t_ok) == "completed")
    gevent.sleep(1.0)
    assert [task_state(h, t) for t in later] == ["assigned", "assigned"]
    assert int(counter.read_text()) == 1                 # no further round of the CLI ran
    assert "paused" in (h.rt.workers[a2].problem or "")
    CliState(h.town.r, h.keys).resume("auth")
    wait_for(lambda: all(task_state(h, t) == "completed" for t in later), timeout=20)


def test_usage_of_mission_tasks_is_summed_on_the_mission(harness, tmpdir_short):
    """round_ok.lua (exit 0) and add_usage.lua (a failed round) both add to the mission's meta,
    which the mission budget reads; junk of the wrong type there never fails a round's end."""
    counter = tmpdir_short / "n"
    h = harness([{"name": "m", "cli": "cl"}],
                {"cl": {"command": fake(f"--counter {counter}", "--first",
                                        "1:claude_error.json:1", "--print claude_success.json",
                                        "--usage '{\"cost_usd\": 0.5}'"),
                        "output": "claude-json"}})
    aid = first_aid(h)
    mid = "0b8f1c9e-5e0b-4c52-9d3e-2f4a8b6c7d11"
    tid = h.town.assign(aid, "mission work", tags=[f"mission:{mid}"])
    wait_for(lambda: task_state(h, tid) == "completed", timeout=30)
    meta = h.town.r.hgetall(h.keys.mission_meta(mid))
    assert float(meta["cost_usd"]) == pytest.approx(0.5 + 0.5 + 0.0123)
    assert meta["input_tokens"] == "1200"
    h.town.r.delete(h.keys.mission_meta(mid))
    h.town.r.rpush(h.keys.mission_meta(mid), "junk")           # the wrong type
    t2 = h.town.assign(aid, "more", tags=[f"mission:{mid}"])
    wait_for(lambda: task_state(h, t2) == "completed", timeout=30)
    assert float(h.town.get_task_meta(t2)["cost_usd"]) == pytest.approx(0.5123)


def test_a_reload_ends_the_pause_of_the_configs_clis(harness):
    h = harness([{"name": "r", "cli": "ok"}], {"ok": "cat >/dev/null; echo fine"})
    aid = first_aid(h)
    st = CliState(h.town.r, h.keys)
    st.pause("ok", "Invalid API key")
    st.pause("elsewhere", "not ours")
    tid = h.town.assign(aid, "x")
    wait_for(lambda: "paused" in (h.rt.workers[aid].problem or ""))
    assert task_state(h, tid) == "assigned"
    notes = h.rt.sync(initial=False)
    assert "agent CLI ok: pause ended" in notes
    wait_for(lambda: task_state(h, tid) == "completed")
    assert h.town.r.hget(h.keys.cli("elsewhere"), "paused") == "1"   # not a CLI of this config


@pytest.mark.system     # two daemon processes on one town (scripts/test-system)
def test_cooldown_across_two_daemon_processes(redis_server, tmpdir_short):
    """Two `tinytownd run` processes on one Redis, one agent of the same CLI each: a 429 that
    one of them sees cools the CLI down for the other too (no round of it starts meanwhile)."""
    from tests.support.daemon import DaemonProcess
    from tinytownd.store.keys import Keys
    from tinytownd.store.town import Town

    counter, rec = tmpdir_short / "n", tmpdir_short / "rec"
    clis = {"rl": {"command": fake(f"--counter {counter} --record {rec}", "--first",
                                   "2:codex_rate_limited.jsonl:75", "--print codex_success.jsonl"),
                   "output": "codex-jsonl", "cooldown_s": 1.5, "cooldown_max_s": 3}}
    daemons = []
    for name in ("a", "b"):
        root = tmpdir_short / name
        root.mkdir()
        cfg = write_config(root, redis_server.url, town="duo", clis=clis,
                           agents=[{"name": f"rl-{name}", "cli": "rl"}])
        daemons.append(DaemonProcess(root, config=cfg))
    town = Town(redis_server.client(), Keys("duo"))
    try:
        for d in daemons:
            d.start()
        watch = CooldownWatch(town.r, town.keys.cli("rl"))

        def aid(n):
            try:
                return town.resolve_agent(n)
            except LookupError:
                return None
        aids = [wait_for(lambda n=n: aid(n), 30) for n in ("rl-a", "rl-b")]
        wait_for(lambda: all((town.get_agent(a) or {}).get("state") == "idle" for a in aids), 30)
        tids = [town.assign(aids[i % 2], f"t{i}") for i in range(6)]
        wait_for(lambda: all((town.get_task(t) or {}).get("state") == "completed"
                             for t in tids), 90)
        cooldowns = watch.stop()
        assert all(town.get_task_meta(t)["attempts"] == "1" for t in tids)
        assert cooldowns
        starts = _starts(rec)
        assert {who for _t, who in starts} == {"rl-a", "rl-b"}
        for t, who in starts:
            for begin, end in cooldowns:
                assert not (begin + 0.3 < t < end), (who, t, begin, end)
        # the rounds after the first cooldown ran on both daemons' agents
        assert {who for t, who in starts if t >= cooldowns[0][1]} == {"rl-a", "rl-b"}
    finally:
        for d in daemons:
            d.terminate()
            d.cleanup()


@pytest.mark.parametrize("junk", ["list", "fields"])
def test_junk_in_the_cli_state_key_is_no_crash(harness, junk):
    """A client wrote junk into tt:<town>:tinytownd:cli:<name>: a key of the wrong type is
    quarantined (the agents keep working), junk field values count as no cooldown."""
    h = harness([{"name": "j", "cli": "ok"}], {"ok": "cat >/dev/null; echo fine"})
    aid = first_aid(h)
    key = h.keys.cli("ok")
    if junk == "list":
        h.town.r.delete(key)
        h.town.r.rpush(key, "junk")
    else:
        h.town.r.hset(key, mapping={"cooldown_until": "soon", "cooldown_level": "x"})
    tid = h.town.assign(aid, "x")
    wait_for(lambda: task_state(h, tid) == "completed", timeout=30)
    assert h.town.r.type(key) in ("hash", "none")
    assert CliState(h.town.r, h.keys).read(["ok"])["ok"].get("cooldown_until") is None
