"""The pathological agent CLI classes: huge output, background children, ignoring SIGTERM,
reading stdin forever, a missing command.
"""
from __future__ import annotations

import os
import time


from . import harness
from .harness import Site, Trial, wait_until
from .classes import _settle, _after_ends, fault  # noqa: F401


# ============================================================================= agent CLIs
def _one_cli(trial: Trial, command: str, *, timeout_s=30, max_attempts=1, result_tail=4000):
    site = trial.site(agents=1, agent_clis={"bad": {"command": command, "timeout_s": timeout_s,
                                                    "max_attempts": max_attempts}},
                      agent_specs=[{"name": "w-1", "cli": "bad"}],
                      runtime={"result_tail_bytes": result_tail}).start()
    return site


def _task(site: Site, tid: str) -> dict:
    return site.r.hgetall(site.keys.task(tid)) or {}


@fault("cli-huge-output", "an agent CLI that prints 500 MB in one round (100 MB quick)",
       trials_full=1, budget_quick=60, budget_full=240)
def cli_huge_output(trial: Trial) -> None:
    res = trial.result
    mb = trial.pick(100, 500)
    site = _one_cli(trial, f"head -c {mb}000000 /dev/zero | tr '\\0' x; echo; echo finished",
                    timeout_s=200)
    tid = site.cli_assign("w-1", "print a lot")
    res.submitted += 1
    t0 = time.monotonic()
    site.wait_terminal([tid], trial.pick(40, 200))
    took = time.monotonic() - t0
    t = _task(site, tid)
    site.measure([tid])
    res.check(t.get("state") == "completed", f"the round completes (state {t.get('state')})")
    res.check(len(t.get("result", "")) <= 4100, f"the result is the tail only "
                                                 f"({len(t.get('result', ''))} chars)")
    logs = list((site.root / "logs").glob("w-1_round_*.log"))
    size = sum(p.stat().st_size for p in logs)
    res.note(f"{mb} MB printed in {took:.1f}s; round logs on disk: {len(logs)} file(s), "
             f"{size / 1e6:.1f} MB")
    res.check(size <= 64 << 20, f"the round log on disk is bounded (<= 64 MiB; it is "
                                f"{size / 1e6:.1f} MB)")
    pid = site.daemon_pid()
    res.check(harness.rss_kb(pid) < 400 << 10, f"daemon RSS stays small "
                                               f"({harness.rss_kb(pid) // 1024} MiB)")


@fault("cli-bg-child", "an agent CLI that leaves a background child sleeping",
       trials_full=2, budget_quick=45)
def cli_bg_child(trial: Trial) -> None:
    res = trial.result
    pidf = trial.dir / "child.pid"
    site = _one_cli(trial, f"sleep 300 & echo $! > {pidf}; echo started")
    tid = site.cli_assign("w-1", "leave a child")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    site.measure([tid])
    res.check(_task(site, tid).get("state") == "completed", "the round completes")
    try:
        child = int(pidf.read_text().strip())
    except (OSError, ValueError):
        child = None
    gone = wait_until(lambda: not harness.alive(child), 3.0) if child else False
    res.check(bool(gone), f"the background child (pid {child}) is gone after the round")


def _timed_out(trial: Trial, site, text: str) -> None:
    """One task on w-1 whose CLI (timeout_s 1) must be ended: it fails with a timeout reason
    within the timeout plus the kill's grace."""
    res = trial.result
    t0 = time.monotonic()
    tid = site.cli_assign("w-1", text)
    res.submitted += 1
    site.wait_terminal([tid], 20)
    took = time.monotonic() - t0
    site.measure([tid])
    t = _task(site, tid)
    res.check(t.get("state") == "failed" and "tim" in t.get("result", "").lower(),
              f"the task fails with a timeout reason ({t.get('state')}: "
              f"{t.get('result', '')[:100]!r})")
    res.check(took <= 1 + 3 + 4, f"killed within timeout + grace ({took:.1f}s)")


@fault("cli-ignore-term", "an agent CLI that ignores SIGTERM, with timeout_s 1",
       trials_full=2, budget_quick=45)
def cli_ignore_term(trial: Trial) -> None:
    res = trial.result
    pidf = trial.dir / "cli.pid"
    site = _one_cli(trial, f"trap '' TERM; echo $$ > {pidf}; while :; do sleep 0.2; done",
                    timeout_s=1)
    _timed_out(trial, site, "ignore SIGTERM")
    try:
        pid = int(pidf.read_text().strip())
    except (OSError, ValueError):
        pid = None
    res.check(pid is not None and not harness.alive(pid), f"the CLI (pid {pid}) is gone")


@fault("cli-stdin-forever", "an agent CLI that reads stdin forever (timeout_s 1); and one "
       "that reads it to EOF", trials_full=2, budget_quick=45)
def cli_stdin_forever(trial: Trial) -> None:
    res = trial.result
    site = _one_cli(trial, "while :; do cat > /dev/null; sleep 0.05; done", timeout_s=1)
    _timed_out(trial, site, "read forever")
    site.stop()
    site2 = trial.site("eof", agents=1, agent_clis={"cat": {"command": "cat; echo read-it",
                                                            "timeout_s": 10,
                                                            "max_attempts": 1}},
                       agent_specs=[{"name": "w-1", "cli": "cat"}]).start()
    tid = site2.town.assign(site2.aid("w-1"), "x" * 200_000)   # a prompt > a pipe buffer
    res.submitted += 1
    site2.wait_terminal([tid], 20)
    site2.measure([tid])
    res.check(_task(site2, tid).get("state") == "completed",
              "a CLI that reads a 200 kB prompt to EOF completes")


@fault("cli-missing", "the agent command does not exist (exit 127)", trials_full=2,
       budget_quick=45)
def cli_missing(trial: Trial) -> None:
    res = trial.result
    site = _one_cli(trial, f"/nonexistent/fa-agent-{os.getpid()} --print", max_attempts=2)
    tid = site.cli_assign("w-1", "run me")
    res.submitted += 1
    site.wait_terminal([tid], 20)
    site.measure([tid])
    t = _task(site, tid)
    text = t.get("result", "")
    res.check(t.get("state") == "failed", f"the task is failed ({t.get('state')})")
    res.check("127" in text or "not found" in text.lower(),
              f"the failure names exit 127 / not found ({text[:160]!r})")
    dl = [e for e in site.deadletters() if e.get("task") == tid]
    res.check(bool(dl) and bool(dl[0].get("reason")),
              f"a dead-letter entry with a reason ({dl[:1]})")
