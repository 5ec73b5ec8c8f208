"""`tinytownd batch` with agent CLIs that cost money, hit rate limits and fail fatally: the real
command, an embedded redis-server, fake CLIs printing what the real ones print."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.batch import json_lines, run_batch
from tests.support.leftovers import no_redis_under
from tinytownd.batch.guard import decide

FAKE = Path(__file__).resolve().parents[1] / "fake_clis" / "fake_agent.py"


def fake(*args: str) -> str:
    return f"{sys.executable} {FAKE} " + " ".join(args)


def write(path: Path, n: int, cli: dict, *, agents: int = 2) -> Path:
    data = {"agent_clis": {"f": cli},
            "agents": [{"name": "w", "role": "worker", "cli": "f", "count": agents}],
            "tasks": [{"id": f"t{i}", "description": f"task {i}"} for i in range(n)]}
    path.write_text(json.dumps(data))
    return path


def counted(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


def test_usage_totals_per_task_and_per_batch(tmpdir_short):
    bf = write(tmpdir_short / "b.yaml", 6, {"command": fake("--print claude_success.json"),
                                            "output": "claude-json"})
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  "--progress", "none", cwd=tmpdir_short)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    t = s["totals"]
    assert t["cost_usd"] == pytest.approx(6 * 0.0123)
    assert t["input_tokens"] == 6 * 1200 and t["output_tokens"] == 6 * 340
    assert t["cached_tokens"] == 6 * 800 and t["turns"] == 6
    for row in s["tasks"]:
        assert row["cost_usd"] == pytest.approx(0.0123) and row["input_tokens"] == 1200
        assert row["model"] == "claude-sonnet-4-5-20250929" and row["result"] == "Hello CLI Test"
    assert "cost $0.0738" in p.stdout and "COST" in p.stdout
    assert no_redis_under(tmpdir_short)


@pytest.mark.parametrize("agents", [1, 3])
def test_fatal_error_fails_one_task_pauses_the_cli_and_the_rest_is_not_attempted(
        tmpdir_short, agents):
    counter, broken = tmpdir_short / "n", tmpdir_short / "bad-key"
    broken.write_text("")
    bf = write(tmpdir_short / "b.yaml", 100,
               {"command": fake(f"--counter {counter}",
                                f"--fail-while {broken}:claude_auth_failed.txt:78"),
                "max_attempts": 3}, agents=agents)
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--id", "F", "--dir", str(tmpdir_short / "run"), "--summary",
                  str(summ), cwd=tmpdir_short, timeout=120)
    assert p.returncode == 75, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    failed = [r for r in s["tasks"] if r["state"] == "failed"]
    # each agent that was already running a round when the first fatal error came may fail its
    # task too; no task is tried twice, and nothing else starts
    assert 1 <= len(failed) <= agents and counted(counter) == len(failed)
    assert all(r["attempts"] == 1 and r["failures"] == ["fatal"] for r in failed)
    assert sum(1 for r in s["tasks"] if r["attempts"] == 0) == 100 - len(failed)
    assert s["stopped"]["reason"] == "cli_paused"
    assert "agent CLI f is paused after a fatal error" in s["stopped"]["message"]
    lines = json_lines(p.stdout)
    assert any(x["event"] == "batch.cli_state" and x.get("paused") for x in lines)
    assert "--resume F" in p.stderr
    # the key fixed: a resume starts the embedded daemon, which ends the pause
    broken.unlink()
    p = run_batch(str(bf), "--resume", "F", "--dir", str(tmpdir_short / "run"), "--summary",
                  str(summ), "--progress", "none", cwd=tmpdir_short, timeout=120)
    s = json.loads(summ.read_text())
    assert p.returncode == 1, p.stderr + p.stdout          # the fatal ones stay failed
    assert s["totals"]["completed"] == 100 - len(failed)


def test_max_cost_usd_stops_dispatch_at_the_budget(tmpdir_short):
    counter = tmpdir_short / "n"
    bf = write(tmpdir_short / "b.yaml", 40,
               {"command": fake(f"--counter {counter} --sleep 0.05",
                                "--usage '{\"cost_usd\": 1.0}'")}, agents=2)
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--id", "C", "--dir", str(tmpdir_short / "run"), "--summary",
                  str(summ), "--max-cost-usd", "5", "--progress", "none", cwd=tmpdir_short,
                  timeout=120)
    assert p.returncode == 75, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    done = s["totals"]["completed"]
    # once $5 is spent nothing new starts: only rounds already running (or taken) finish
    assert 5 <= done <= 5 + 2 * 2 and counted(counter) == done
    assert s["totals"]["cost_usd"] == pytest.approx(done)
    assert s["stopped"]["reason"] == "budget" and "cost budget reached" in s["stopped"]["message"]
    assert "raise --max-cost-usd" in p.stdout and "--resume C" in p.stdout
    p = run_batch(str(bf), "--resume", "C", "--dir", str(tmpdir_short / "run"), "--summary",
                  str(summ), "--max-cost-usd", "1000", "--progress", "none", cwd=tmpdir_short,
                  timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    assert counted(counter) == 40


def test_batch_waits_through_cooldowns_then_max_wait_exits_75(tmpdir_short):
    counter = tmpdir_short / "n"
    cli = {"command": fake(f"--counter {counter}", "--first", "1:codex_rate_limited.jsonl:75",
                           "--print codex_success.jsonl"),
           "output": "codex-jsonl", "cooldown_s": 2, "cooldown_max_s": 4}
    bf = write(tmpdir_short / "b.yaml", 4, cli)
    summ = tmpdir_short / "s.json"
    p = run_batch(str(bf), "--dir", str(tmpdir_short / "run"), "--summary", str(summ),
                  cwd=tmpdir_short, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert all(r["attempts"] == 1 for r in s["tasks"])
    assert sum(r.get("failures", []).count("rate_limited") for r in s["tasks"]) == 1
    lines = json_lines(p.stdout)
    cool = [x for x in lines if x["event"] == "batch.cli_state" and x.get("cooldown_until")]
    assert cool and cool[0]["cli"] == "f" and cool[0]["cooldown_left_s"] > 0
    # a CLI that is always rate limited: --max-wait ends the batch, resumable
    cli["command"] = fake("--print codex_rate_limited.jsonl --exit 75")
    cli["cooldown_s"] = cli["cooldown_max_s"] = 60
    bf = write(tmpdir_short / "b2.yaml", 4, cli)
    p = run_batch(str(bf), "--id", "W", "--dir", str(tmpdir_short / "run2"), "--summary",
                  str(summ), "--max-wait", "2", "--progress", "none", cwd=tmpdir_short,
                  timeout=120)
    assert p.returncode == 75, p.stderr + p.stdout
    s = json.loads(summ.read_text())
    assert s["stopped"]["reason"] == "max_wait" and "--max-wait 2" in s["stopped"]["message"]
    assert all(r["attempts"] == 0 and r["state"] in ("pending", "assigned") for r in s["tasks"])


@pytest.mark.parametrize("args", [["--max-cost-usd", "0"], ["--max-cost-usd", "-1"],
                                  ["--max-wait", "0"], ["--max-cost-usd", "1e9"],
                                  ["--max-wait", "nan"]])
def test_limits_are_bounded(tmpdir_short, args):
    bf = write(tmpdir_short / "b.yaml", 1, {"command": "true"})
    p = run_batch(str(bf), *args, "--dir", str(tmpdir_short / "run"), cwd=tmpdir_short)
    assert p.returncode == 2 and args[0] in p.stderr


def test_decide():
    cool = {"cli": "a", "cooldown_until": "2026-01-01T00:00:00Z", "cooldown_left_s": 5.0}
    d = decide(clis={"a", "b"}, states={"a": cool, "b": {"cli": "b"}}, spent_usd=0,
               max_cost_usd=None, waited_s=100, max_wait_s=10)
    assert d.stop is None and not d.all_cooling            # b still works
    d = decide(clis={"a"}, states={"a": cool}, spent_usd=0, max_cost_usd=None, waited_s=11,
               max_wait_s=10)
    assert d.stop == "max_wait"
    d = decide(clis={"a", "b"}, states={"a": {"cli": "a", "paused": True, "paused_reason": "x"}},
               spent_usd=2.0, max_cost_usd=2.0, waited_s=0, max_wait_s=None)
    assert d.stop == "budget"
    d = decide(clis={"a", "b"}, states={"a": {"cli": "a", "paused": True, "paused_reason": "x"}},
               spent_usd=0, max_cost_usd=None, waited_s=0, max_wait_s=None)
    assert d.stop is None and d.paused == {"a": "x"}
    d = decide(clis={"a", "b"}, states={"a": {"cli": "a", "paused": True, "paused_reason": "x"}},
               spent_usd=0, max_cost_usd=None, waited_s=0, max_wait_s=None,
               stuck_with_paused=True)
    assert d.stop == "cli_paused"
