"""What the end of a round means: a pure decision from the CLI's result and the task's state.

  interrupted  the round was stopped (operator kill, drain deadline, lost lease): the messages go
               back to their queues and the attempt is not counted
  ok           exit 0: the task completes with the output tail, unless the CLI finished it itself
  cli_finished the CLI failed but had already finished the task itself (e.g. `task fail`)
  retry        a failure with attempts left: the messages come back after `backoff_s`
  failed       out of attempts (or a failed round without a task): task `failed`, dead letter
"""
from __future__ import annotations

from dataclasses import dataclass

from tinytownd.store.wire import TASK_TERMINAL


@dataclass(frozen=True)
class Outcome:
    kind: str                 # interrupted | ok | cli_finished | retry | failed
    error: str = ""           # what went wrong, for logs, last_error and dead letters
    backoff_s: float = 0.0    # retry: how long the messages wait
    reason: str = ""          # failed: the dead-letter reason


def error_text(result) -> str:
    if result.timed_out:
        return f"timed out after {result.duration_s:.1f}s"
    if result.exit_code is None:
        return result.error or "could not start the CLI"
    return f"exit status {result.exit_code}"


def failure_class(result) -> str:
    """The class of a failed round for metrics: timeout or error."""
    return "timeout" if result.timed_out else "error"


def decide(result, *, lease_lost: bool, has_task: bool, task_state: str | None, attempt: int,
           max_attempts: int, backoff_s: float, backoff_max_s: float) -> Outcome:
    """`task_state`: the task hash's state now (None for a round without a task hash)."""
    if result.killed or lease_lost:
        return Outcome("interrupted")
    if result.ok:
        return Outcome("ok")
    err = error_text(result)
    if task_state in TASK_TERMINAL:
        return Outcome("cli_finished", err)
    if has_task and attempt < max_attempts:
        return Outcome("retry", err, min(backoff_s * (2 ** (attempt - 1)), backoff_max_s))
    return Outcome("failed", err, reason="max attempts" if has_task else "cli failed")
