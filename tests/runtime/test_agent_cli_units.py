"""Agent CLIs, the pure parts: prompt delivery (through a real `sh -c`), structured output of the
real CLIs (fixtures), failure classes, "retry after" waits, usage files, the round's verdict, the
config rules (placeholders imply the mode; bounds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytownd import config
from tinytownd.config.agent_cli import PRESET_FATAL_PATTERNS, PRESET_RATE_LIMIT_PATTERNS
from tinytownd.runtime.agent_cli import delivery, failure, output, report, usage
from tinytownd.runtime.agent_cli.cooldown import RECHECK_S, RETURN_SPREAD_S, agent_wait_s
from tinytownd.runtime.runner import CliResult

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "agent_cli"
FAKE = Path(__file__).resolve().parents[1] / "fake_clis" / "fake_agent.py"
F = "/tmp/x/t.yaml"


def _sh(command: str, stdin: str, tmp: Path) -> bytes:
    """Run `command` as the runner does (sh -c) and return what the fake CLI received."""
    out = tmp / "got"
    if out.exists():
        out.unlink()
    subprocess.run(["sh", "-c", command.replace("SAVE", str(out))], input=stdin.encode(),
                   check=True, timeout=30)
    return out.read_bytes()


PROMPTS = ["plain", "it's \"quoted\" `back` $HOME ${X} $(id) \\ \n second line\n",
           "ünïcödé ✓ -- --flag", "-n", "x" * (100 << 10)]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "shell", "unicode", "dash", "100k"])
@pytest.mark.parametrize("mode", ["stdin", "file", "arg"])
def test_each_prompt_mode_delivers_the_exact_prompt(tmp_path, mode, prompt):
    pf = tmp_path / "it's a $dir" / "prompt.txt"
    pf.parent.mkdir()
    pf.write_text(prompt)
    base = f"{sys.executable} {FAKE} --prompt {mode} --save SAVE --"
    for command in (base, base + (" {prompt_file}" if mode == "file" else
                                  " {prompt}" if mode == "arg" else "")):
        cmd, stdin = delivery.prepare(mode, command, prompt, str(pf))
        assert (stdin == prompt) == (mode == "stdin")
        assert _sh(cmd, stdin, tmp_path) == prompt.encode()


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=300))
def test_arg_mode_quotes_any_text(tmp_path_factory, prompt):
    tmp = tmp_path_factory.mktemp("q")
    cmd, _ = delivery.prepare("arg", f"{sys.executable} {FAKE} --prompt arg --save SAVE -- "
                                     "{prompt}", prompt, "/nonexistent")
    assert _sh(cmd, "", tmp) == prompt.encode()


def test_arg_mode_too_long_is_refused_with_a_reason():
    with pytest.raises(delivery.PromptTooLong, match="prompt: file or stdin"):
        delivery.prepare("arg", "cli {prompt}", "x" * 200_000, "/p")


# ----------------------------------------------------------------------------- output
def _parse(fmt: str, data: bytes, chunk: int = 7):
    c = output.collector(fmt)
    for i in range(0, len(data), chunk):
        c.feed(data[i:i + chunk])
    return c.parse()


def test_claude_json_result_and_usage():
    p = _parse("claude-json", (FIX / "claude_success.json").read_bytes())
    assert p.problem is None and not p.is_error and p.result == "Hello CLI Test"
    assert p.usage == {"input_tokens": 1200, "output_tokens": 340, "cached_tokens": 800,
                       "cache_write_tokens": 150, "cost_usd": 0.0123, "turns": 1,
                       "session_id": "3f0b7c2e-6d0a-4a5e-9a51-1c2d3e4f5a6b",
                       "model": "claude-sonnet-4-5-20250929"}


def test_claude_json_after_warnings_and_verbose_array():
    data = b"warning: something on stderr\n" + (FIX / "claude_success.json").read_bytes()
    assert _parse("claude-json", data).result == "Hello CLI Test"
    p = _parse("claude-json", (FIX / "claude_verbose.json").read_bytes())
    assert p.result == "Done." and p.usage["turns"] == 2 and p.usage["cost_usd"] == 0.004


def test_claude_json_errors():
    p = _parse("claude-json", (FIX / "claude_error.json").read_bytes())
    assert p.is_error and "error_during_execution" in p.result
    p = _parse("claude-json", (FIX / "claude_rate_limited.json").read_bytes())
    assert p.is_error and "rate_limit_error" in p.result


def test_codex_jsonl_result_usage_and_failures():
    p = _parse("codex-jsonl", (FIX / "codex_success.jsonl").read_bytes(), chunk=13)
    assert p.problem is None and not p.is_error
    assert p.result == "Done. I updated the docs and added examples."
    assert p.usage == {"input_tokens": 24763, "cached_tokens": 24448, "output_tokens": 122,
                       "turns": 1, "session_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"}
    two = (FIX / "codex_success.jsonl").read_bytes() * 2
    assert _parse("codex-jsonl", two).usage["input_tokens"] == 2 * 24763
    p = _parse("codex-jsonl", (FIX / "codex_turn_failed.jsonl").read_bytes())
    assert p.is_error and p.result == "model response stream ended unexpectedly"
    p = _parse("codex-jsonl", (FIX / "codex_reconnect_then_ok.jsonl").read_bytes())
    assert not p.is_error and p.result == "All set."


@pytest.mark.parametrize("fmt,data", [
    ("claude-json", b""), ("claude-json", b"Hello, plain text"), ("claude-json", b'{"type": "x"}'),
    ("claude-json", b'{"type":"result","result":'), ("codex-jsonl", b"plain\ntext\n"),
    ("codex-jsonl", b""), ("codex-jsonl", b"[1,2]\n{]\n")])
def test_malformed_output_is_a_problem_not_a_crash(fmt, data):
    p = _parse(fmt, data)
    assert p.problem and f"not {fmt}" in p.problem


@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(["claude-json", "codex-jsonl"]),
       data=st.one_of(st.binary(max_size=400),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                                   st.text(max_size=20),
                                   lambda c: st.lists(c, max_size=4) |
                                   st.dictionaries(st.sampled_from(
                                       ["type", "result", "is_error", "usage", "item", "text",
                                        "total_cost_usd", "num_turns", "input_tokens", "error",
                                        "message", "modelUsage", "session_id", "subtype"]),
                                       c, max_size=6), max_leaves=12)
                      .map(lambda v: json.dumps(v).encode() + b"\n")),
       chunk=st.integers(1, 64))
def test_any_output_parses_or_has_a_problem(fmt, data, chunk):
    p = _parse(fmt, data, chunk)
    assert p.problem is None or isinstance(p.problem, str)
    assert isinstance(p.result, str)
    clean, _ = usage.clean(p.usage)
    assert clean == p.usage


# ----------------------------------------------------------------------------- failure
def _cls(text, code=1, timed_out=False):
    return failure.classify(exit_code=code, timed_out=timed_out, text=text,
                            rate_limit_patterns=PRESET_RATE_LIMIT_PATTERNS,
                            fatal_patterns=PRESET_FATAL_PATTERNS)[0]


def test_classes():
    assert _cls("boom", code=75) == "rate_limited"
    assert _cls("boom", code=78) == "fatal"
    assert _cls("boom", timed_out=True) == "timeout"
    assert _cls("boom") == "error"
    assert _cls("some test failed: expected 429 items") == "error"
    for t in ["API Error: 429 {\"type\":\"error\"}", "HTTP 429 Too Many Requests",
              "exceeded retry limit, last status: 429 Too Many Requests",
              "Error: Overloaded", "You've hit your usage limit.", "rate_limit_error",
              "RESOURCE_EXHAUSTED: quota exceeded"]:
        assert _cls(t) == "rate_limited", t
    for t in ["Invalid API key · Please run /login", "authentication_error", "Failed to "
              "authenticate. API Error: 401", "unknown model: gpt-9", "model_not_found"]:
        assert _cls(t) == "fatal", t


@pytest.mark.parametrize("text,secs", [
    ("Please retry after 7 seconds.", 7), ("try again in 1m30s", 90), ("Retry-After: 20", 20),
    ("Try again in 4 days 20 hours 9 minutes.", failure.MAX_RETRY_AFTER_S),
    ("try again in 2 hours and 5 minutes", 7500), ("retry after 500ms", 0.5),
    ("no wait named", None)])
def test_retry_after(text, secs):
    assert failure.retry_after_s(text, time.time()) == secs


def test_retry_after_reset_times():
    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 120))
    assert 118 <= failure.retry_after_s(f"limit resets at {iso}", now) <= 121
    assert 99 <= failure.retry_after_s(f"usage limit reached|{int(now) + 100}", now) <= 101


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_retry_after_any_text(text):
    s = failure.retry_after_s(text, time.time())
    assert s is None or 0 <= s <= failure.MAX_RETRY_AFTER_S


def test_named_cooldown_floor():
    from tinytownd.runtime.agent_cli.cooldown import MIN_NAMED_S, cooldown_named_s
    assert cooldown_named_s(None) is None and cooldown_named_s(0) == MIN_NAMED_S
    assert cooldown_named_s(7) == 7.0


def test_agent_wait_steps_and_spread():
    assert agent_wait_s(60_000, 0, 0.5) == RECHECK_S
    assert agent_wait_s(1_000, 0, 1.0) == 1.0 + RETURN_SPREAD_S
    assert agent_wait_s(0, 5_000, 0.0) == 0.0


# ----------------------------------------------------------------------------- usage file
def test_usage_file(tmp_path):
    p = tmp_path / "u.json"
    assert usage.from_file(str(p)) is None
    p.write_text(json.dumps({"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5,
                             "model": "m1", "extra": 1, "turns": -1}))
    got, problems = usage.from_file(str(p))
    assert got == {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.5, "model": "m1"}
    assert any("extra" in x for x in problems) and any("turns" in x for x in problems)
    assert not p.exists()
    p.write_text("{nope")
    assert usage.from_file(str(p))[1][0].startswith("not JSON")
    p.write_bytes(b" " * (usage.USAGE_FILE_MAX + 10))
    assert "larger" in usage.from_file(str(p))[1][0]


# ----------------------------------------------------------------------------- verdict
CLI = config.AgentCli(command="x", output="claude-json",
                      rate_limit_patterns=PRESET_RATE_LIMIT_PATTERNS,
                      fatal_patterns=PRESET_FATAL_PATTERNS)


def _res(code=0, out="", **kw):
    return CliResult(exit_code=code, timed_out=False, killed=False, duration_s=1.0, pid=1,
                     output=out, **kw)


def test_verdicts():
    ok = _parse("claude-json", (FIX / "claude_success.json").read_bytes())
    v = report.judge(_res(), CLI, ok, None, time.time())
    assert v.failure is None and v.result == "Hello CLI Test" and v.usage["cost_usd"] == 0.0123
    bad = _parse("claude-json", b"not json")
    v = report.judge(_res(), CLI, bad, None, time.time())
    assert v.failure == "error" and "not claude-json" in v.error
    rl = _parse("claude-json", (FIX / "claude_rate_limited.json").read_bytes())
    v = report.judge(_res(1), CLI, rl, None, time.time())
    assert v.failure == "rate_limited" and v.retry_after_s == 7
    v = report.judge(_res(1, "Invalid API key · Please run /login"),
                     dataclasses_replace(CLI, output="text"), None, None, time.time())
    assert v.failure == "fatal" and "Invalid API key" in v.error
    v = report.judge(_res(0, "fine"), dataclasses_replace(CLI, output="text"), None,
                     ({"cost_usd": 1.5}, []), time.time())
    assert v.failure is None and v.result is None and v.usage == {"cost_usd": 1.5}


def dataclasses_replace(obj, **kw):
    import dataclasses
    return dataclasses.replace(obj, **kw)


# ----------------------------------------------------------------------------- config
def _cfg(cli: dict):
    return config.from_dict({"agent_clis": {"c": cli}}, F, env={}).agent_clis["c"]


def _bad(cli: dict) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"agent_clis": {"c": cli}}, F, env={})
    return str(e.value)


def test_placeholders_imply_the_prompt_mode():
    assert _cfg({"command": "x"}).prompt == "stdin"
    assert _cfg({"command": "x --message-file {prompt_file}"}).prompt == "file"
    assert _cfg({"command": "x -p {prompt}"}).prompt == "arg"
    assert _cfg({"command": "x", "prompt": "arg"}).prompt == "arg"
    assert "c.prompt" in _bad({"command": "x {prompt}", "prompt": "stdin"})
    assert "both" in _bad({"command": "x {prompt} {prompt_file}"})


def test_agent_cli_bounds():
    assert "c.output" in _bad({"command": "x", "output": "xml"})
    assert "c.rate_limit_patterns[0]" in _bad({"command": "x", "rate_limit_patterns": ["("]})
    assert "c.fatal_patterns" in _bad({"command": "x", "fatal_patterns": ["a"] * 33})
    assert "c.cooldown_s" in _bad({"command": "x", "cooldown_s": 0})
    assert "c.cooldown_max_s" in _bad({"command": "x", "cooldown_s": 60, "cooldown_max_s": 30})
    assert "c.inactivity_timeout_s" in _bad({"command": "x", "inactivity_timeout_s": -1})


def test_presets():
    b = config.BUILTIN_CLIS
    assert b["claude"].output == "claude-json" and "--output-format json" in b["claude"].command
    assert b["codex"].output == "codex-jsonl" and "exec --json" in b["codex"].command
    assert b["codex"].prompt == "stdin"
    assert b["aider"].prompt == "file" and "--message-file {prompt_file}" in b["aider"].command
    assert all(c.rate_limit_patterns and c.fatal_patterns for c in b.values())
    for name, c in b.items():       # every preset's placeholder agrees with its mode
        assert _cfg({"command": c.command}).prompt == c.prompt, name


def test_readme_documents_every_preset():
    """The README table names each preset's exact command, and marks unverified the presets
    whose flags could not be confirmed (config/agent_cli.py PRESET_SOURCES)."""
    from tinytownd.config.agent_cli import PRESET_SOURCES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert set(PRESET_SOURCES) == set(config.BUILTIN_CLIS)
    for name, cli in config.BUILTIN_CLIS.items():
        row = next((ln for ln in readme.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row and f"`{cli.command}`" in row, name
        verified, unconfirmed = PRESET_SOURCES[name]
        if not verified:
            assert "**unverified**" in row, name
