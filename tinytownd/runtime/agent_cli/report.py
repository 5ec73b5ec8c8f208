"""One round's verdict: did it succeed, what is the result, how did it fail, what did it cost.

`judge` is pure: the CLI's result (runner.CliResult), its settings (config.AgentCli), what the
output collector parsed (None for `text`), the usage file's reading, and the time. The round
(runtime/round.py) then acts on it through outcome.decide.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import failure, usage as usage_mod

ERROR_TEXT_MAX = 1000


@dataclass
class Verdict:
    failure: str | None = None        # None: success; else a class of failure.CLASSES
    error: str = ""                   # what went wrong (logs, last_error, the task's result)
    result: str | None = None         # success: the task result (None: the output's tail)
    usage: dict = field(default_factory=dict)
    retry_after_s: float | None = None  # rate_limited: the wait the output named
    notes: list = field(default_factory=list)   # problems worth a log line (the usage file)


def base_error(result, cli=None) -> str:
    if result.inactive:
        s = getattr(cli, "inactivity_timeout_s", None)
        return f"no output for {s:g}s (inactivity timeout)" if s else \
            "no output for too long (inactivity timeout)"
    if result.timed_out:
        return f"timed out after {result.duration_s:.1f}s"
    if result.exit_code is None:
        return result.error or "could not start the CLI"
    return f"exit status {result.exit_code}"


def judge(result, cli, parsed, file_usage, now: float) -> Verdict:
    v = Verdict()
    if file_usage is not None:
        v.usage, problems = file_usage
        v.notes += [f"usage file: {p}" for p in problems]
    if parsed is not None:
        v.usage = usage_mod.merge(parsed.usage, v.usage)
    if result.killed:
        return v
    ok_exit = result.exit_code == 0 and not result.timed_out
    detail = ""
    if parsed is not None and ok_exit:
        if parsed.problem is None and not parsed.is_error:
            v.result = parsed.result or "Completed"
            return v
        detail = parsed.problem or parsed.result
    elif ok_exit:
        return v
    elif parsed is not None and parsed.problem is None and parsed.is_error and parsed.result:
        detail = parsed.result
    text = "\n".join(x for x in (detail, result.output) if x)
    cls, line = failure.classify(exit_code=result.exit_code, timed_out=result.timed_out,
                                 text=text, rate_limit_patterns=cli.rate_limit_patterns,
                                 fatal_patterns=cli.fatal_patterns)
    err = base_error(result, cli) if not ok_exit else f"{cli.output} error"
    if detail:
        err = f"{err}: {detail}"
    elif line:
        err = f"{err}: {line}"
    v.failure, v.error = cls, err[:ERROR_TEXT_MAX]
    if cls == "rate_limited":
        v.retry_after_s = failure.retry_after_s(text, now)
    return v
