"""Redis refusing a write for its own reasons — not a bad request, and not Redis being away.

  oom       maxmemory reached with a no-eviction policy: writes are refused until memory frees
  misconf   the last RDB save failed (a full disk): writes are refused until one succeeds
  readonly  a replica (after a failover, a demoted primary): writes go to the new primary
  loading   the server is still loading its data set after a restart
  busy      a script runs too long
  unblocked a blocking command was ended because the server changed role (failover: the primary
            was demoted)
A multi-key write refused this way was not applied at all (it is a MULTI/EXEC or one script).
"""
from __future__ import annotations

import redis

_PREFIXES = {"OOM": "oom", "MISCONF": "misconf", "READONLY": "readonly", "LOADING": "loading",
             "BUSY": "busy", "UNBLOCKED": "unblocked"}

EXPLAIN = {
    "oom": "Redis is out of memory (maxmemory reached): it refused the write, nothing was applied",
    "misconf": "Redis cannot save to disk (MISCONF, e.g. the disk is full): it refused the write, "
               "nothing was applied",
    "readonly": "Redis is a read-only replica (READONLY): the write went nowhere",
    "loading": "Redis is still loading its data: try again shortly",
    "busy": "Redis is busy running a script: try again shortly",
    "unblocked": "Redis changed role (a failover) while a command waited: try again",
}


_CLASSES = ((redis.exceptions.OutOfMemoryError, "oom"), (redis.exceptions.ReadOnlyError, "readonly"),
            (redis.exceptions.BusyLoadingError, "loading"))


def refusal(e: BaseException) -> str | None:
    """The kind of refusal behind a ResponseError (also one reported inside a pipeline or an
    aborted MULTI), or None. (redis-py turns some prefixes into classes and drops the prefix.)"""
    for cls, kind in _CLASSES:
        if isinstance(e, cls):
            return kind
    if not isinstance(e, redis.ResponseError):
        return None
    text = str(e)
    if "used memory > 'maxmemory'" in text:
        return "oom"
    for word in text.replace(":", " ").split():
        kind = _PREFIXES.get(word)
        if kind:
            return kind
    return None


def transient(e: BaseException) -> bool:
    """Redis away (connection refused or broken, a timeout) or refusing writes for a while: wait
    and try again; nothing about the request itself is wrong."""
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):
        return not isinstance(e, redis.AuthenticationError)
    return refusal(e) is not None


class Patience:
    """Waiting out a Redis that is away or refusing writes, shared by every loop of a daemon:
    one log line when it starts and one when it ends (not one per agent per second), and a pause
    that grows to MAX_S for each waiter."""

    MAX_S = 5.0

    def __init__(self, log):
        self.log = log
        self.since: float | None = None
        self.last_error = ""

    def failed(self, e: BaseException, delay: float) -> float:
        """Note a failure; returns the next pause for a waiter whose last pause was `delay`."""
        import time
        self.last_error = f"{type(e).__name__}: {e}"[:300]
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("Redis unavailable; waiting", error=self.last_error,
                             kind=refusal(e) or "unreachable")
        return min(self.MAX_S, max(0.25, delay * 2))

    def ok(self) -> None:
        if self.since is not None:
            import time
            self.log.info("Redis available again",
                          after_s=round(time.monotonic() - self.since, 3))
            self.since = None
