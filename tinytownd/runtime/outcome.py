"""What the end of a round means: a pure decision from the CLI's result and the task's state.

  interrupted  the round was stopped (operator kill, drain deadline, lost lease): the messages go
               back to their queues and the attempt is not counted
  ok           exit 0: the task completes with the output tail, unless the CLI finished it itself
  cli_finished the CLI failed but had already finished the task itself (e.g. `task fail`)
  rate_limited the CLI was rate limited: the messages go back without using an attempt and the
               CLI cools down (agent_cli/failure.py)
  retry        a failure with attempts left: the messages come back after `backoff_s`
  failed       out of attempts, a fatal failure (the CLI is then paused), or a failed round
               without a task: task `failed`, dead letter

Every failure carries its class (`failure_class`): error, timeout, rate_limited or fatal.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinytownd.store.wire import TASK_TERMINAL


@dataclass(frozen=True)
class Outcome:
    kind: str                 # interrupted | ok | cli_finished | rate_limited | retry | failed
    error: str = ""           # what went wrong, for logs, last_error and dead letters
    backoff_s: float = 0.0    # retry: how long the messages wait
    reason: str = ""          # failed: the dead-letter reason
    failure_class: str = ""   # a failure: error | timeout | rate_limited | fatal


def error_text(result) -> str:
    if result.inactive:
        return "no output for too long (inactivity timeout)"
    if result.timed_out:
        return f"timed out after {result.duration_s:.1f}s"
    if result.exit_code is None:
        return result.error or "could not start the CLI"
    return f"exit status {result.exit_code}"


def decide(result, *, lease_lost: bool, has_task: bool, task_state: str | None, attempt: int,
           max_attempts: int, backoff_s: float, backoff_max_s: float,
           failure: str | None = None, error: str = "") -> Outcome:
    """`task_state`: the task hash's state now (None for a round without a task hash).
    `failure`/`error`: agent_cli/report.py's verdict (a failure class, or None for a round that
    succeeded); without one, a round is judged by its exit status alone."""
    if result.killed or lease_lost:
        return Outcome("interrupted")
    if failure is None:
        if result.ok:
            return Outcome("ok")
        failure = "timeout" if result.timed_out else "error"
    err = error or error_text(result)
    if task_state in TASK_TERMINAL:
        return Outcome("cli_finished", err, failure_class=failure)
    if failure == "rate_limited" and has_task:
        return Outcome("rate_limited", err, failure_class=failure)
    if failure == "fatal":
        return Outcome("failed", err, reason="fatal", failure_class=failure)
    if has_task and attempt < max_attempts:
        return Outcome("retry", err, min(backoff_s * (2 ** (attempt - 1)), backoff_max_s),
                       failure_class=failure)
    return Outcome("failed", err, reason="max attempts" if has_task else "cli failed",
                   failure_class=failure)
