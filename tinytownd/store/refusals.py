"""Redis refusing a write for its own reasons — not a bad request, and not Redis being away.

  oom       maxmemory reached with a no-eviction policy: writes are refused until memory frees
  misconf   the last RDB save failed (a full disk): writes are refused until one succeeds
  readonly  a replica (after a failover, a demoted primary): writes go to the new primary
  loading   the server is still loading its data set after a restart
  busy      a script runs too long
A multi-key write refused this way was not applied at all (it is a MULTI/EXEC or one script).
"""
from __future__ import annotations

import redis

_PREFIXES = {"OOM": "oom", "MISCONF": "misconf", "READONLY": "readonly", "LOADING": "loading",
             "BUSY": "busy"}

EXPLAIN = {
    "oom": "Redis is out of memory (maxmemory reached): it refused the write, nothing was applied",
    "misconf": "Redis cannot save to disk (MISCONF, e.g. the disk is full): it refused the write, "
               "nothing was applied",
    "readonly": "Redis is a read-only replica (READONLY): the write went nowhere",
    "loading": "Redis is still loading its data: try again shortly",
    "busy": "Redis is busy running a script: try again shortly",
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
