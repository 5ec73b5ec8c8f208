"""How long a CLI cools down, and how long one of its agents waits (pure).

The cooldown itself lives in Redis (store/cli_state.py, lua/cli_rate_limited.lua), shared by
every agent of the CLI on every daemon of the town: a rate limit while no cooldown runs starts
the next level (cooldown_s × 2^(level-1), at most cooldown_max_s, plus up to JITTER of it), or
exactly the wait the CLI's output named; one during a running cooldown only extends it to what
that output named. Agents return at its end plus a random spread, so they do not all start at
once.
"""
from __future__ import annotations

JITTER = 0.2                  # of the computed cooldown, added at random
RETURN_SPREAD_S = 2.0         # agents come back within this much after the end
RECHECK_S = 2.0               # a waiting agent looks again this often (resume-cli ends it early)
MIN_NAMED_S = 1.0             # a named wait shorter than this ("retry after 0s") is this long


def cooldown_named_s(named: float | None) -> float | None:
    """The wait a rate-limit message named, at least MIN_NAMED_S (a CLI that always says
    "retry after 0" must not spin)."""
    return None if named is None else max(float(named), MIN_NAMED_S)


def agent_wait_s(until_ms: int, now_ms: int, rand: float) -> float:
    """How long an agent sleeps before it looks again: until the end plus its share of the
    spread, in steps of at most RECHECK_S."""
    left = max(0.0, (until_ms - now_ms) / 1000.0)
    if left > RECHECK_S:
        return RECHECK_S
    return left + rand * RETURN_SPREAD_S
