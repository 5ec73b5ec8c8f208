"""The end of a round as a pure decision (runtime/outcome.py), and the agent-control reaction."""
import pytest

from tinytownd.runtime.outcome import decide
from tinytownd.runtime.runner import CliResult
from tinytownd.store.agent_control import reaction


def res(code=0, *, timed_out=False, killed=False, error=None):
    return CliResult(code, timed_out, killed, 1.5, 123, error=error)


KW = dict(backoff_s=1.0, backoff_max_s=5.0)


def test_outcomes():
    assert decide(res(0), lease_lost=False, has_task=True, task_state="running", attempt=1,
                  max_attempts=3, **KW).kind == "ok"
    assert decide(res(0), lease_lost=True, has_task=True, task_state="running", attempt=1,
                  max_attempts=3, **KW).kind == "interrupted"
    assert decide(res(None, killed=True), lease_lost=False, has_task=True, task_state=None,
                  attempt=1, max_attempts=3, **KW).kind == "interrupted"
    o = decide(res(2), lease_lost=False, has_task=True, task_state="running", attempt=2,
               max_attempts=3, **KW)
    assert (o.kind, o.error, o.backoff_s) == ("retry", "exit status 2", 2.0)
    o = decide(res(2), lease_lost=False, has_task=True, task_state="running", attempt=9,
               max_attempts=10, **KW)
    assert o.backoff_s == 5.0                                   # capped
    o = decide(res(2), lease_lost=False, has_task=True, task_state="running", attempt=3,
               max_attempts=3, **KW)
    assert (o.kind, o.reason) == ("failed", "max attempts")
    o = decide(res(1), lease_lost=False, has_task=False, task_state=None, attempt=1,
               max_attempts=3, **KW)
    assert (o.kind, o.reason) == ("failed", "cli failed")
    o = decide(res(1), lease_lost=False, has_task=True, task_state="failed", attempt=1,
               max_attempts=3, **KW)
    assert o.kind == "cli_finished"
    o = decide(res(None, timed_out=True), lease_lost=False, has_task=True, task_state="running",
               attempt=1, max_attempts=1, **KW)
    assert o.error == "timed out after 1.5s"
    o = decide(res(None, error="cannot start CLI: x"), lease_lost=False, has_task=True,
               task_state="running", attempt=1, max_attempts=1, **KW)
    assert o.error == "cannot start CLI: x"


@pytest.mark.parametrize("kw,expected", [
    (dict(running_cli=True, parked=False, stop_flag=True, state="stopped", urgent=0,
          leaving=False), "kill"),
    (dict(running_cli=True, parked=False, stop_flag=True, state="draining", urgent=0,
          leaving=False), None),                       # close: the round finishes
    (dict(running_cli=False, parked=True, stop_flag=False, state="paused", urgent=0,
          leaving=False), "wake"),
    (dict(running_cli=False, parked=True, stop_flag=False, state="idle", urgent=2,
          leaving=False), "wake"),
    (dict(running_cli=False, parked=True, stop_flag=False, state="idle", urgent=0,
          leaving=True), "wake"),
    (dict(running_cli=False, parked=True, stop_flag=False, state="idle", urgent=0,
          leaving=False), None),
    (dict(running_cli=False, parked=False, stop_flag=True, state="stopped", urgent=0,
          leaving=False), None),                       # neither running nor parked
])
def test_reaction(kw, expected):
    assert reaction(**kw) == expected
