"""Keys that hold the wrong Redis type: moved to the dead-letter list, so nothing stays stuck.

Every key tinytownd reads has one type (store/keys.py). A client that writes another type there
(a string where an inbox list belongs, a list where a task hash belongs) makes every command on
it fail with WRONGTYPE, and whatever reads it would fail on the same input for ever. When a reader
meets WRONGTYPE it hands the keys it was using to `quarantine`: each key whose type is neither the
expected one nor absent is read (bounded), dead-lettered with the reason and its content, and
deleted, in one MULTI/EXEC. The reader then goes on as if the key were empty.
"""
from __future__ import annotations

import json

import redis

from . import records

READ_MAX = 100          # elements of a list/set/zset/stream kept in the dead-letter entry


def is_wrongtype(e: BaseException) -> bool:
    return isinstance(e, redis.ResponseError) and "WRONGTYPE" in str(e)


def _content(p, key: str, kind: str) -> None:
    if kind == "string":
        p.getrange(key, 0, records.DEADLETTER_RAW_MAX)
    elif kind == "list":
        p.lrange(key, 0, READ_MAX - 1)
    elif kind == "hash":
        p.hscan(key, 0, count=READ_MAX)
    elif kind == "set":
        p.sscan(key, 0, count=READ_MAX)
    elif kind == "zset":
        p.zrange(key, 0, READ_MAX - 1, withscores=True)
    elif kind == "stream":
        p.xrange(key, count=READ_MAX)
    else:
        p.type(key)


def quarantine(town, expected: dict[str, str], *, log=None) -> list[str]:
    """Dead-letter and delete the keys of `expected` (key → Redis type) that hold another type.
    Returns the keys moved."""
    keys = list(expected)
    p = town.r.pipeline(transaction=False)
    for key in keys:
        p.type(key)
    found = p.execute()
    bad = [(k, t) for k, t in zip(keys, found) if t not in ("none", expected[k])]
    if not bad:
        return []
    p = town.r.pipeline(transaction=False)
    for key, kind in bad:
        _content(p, key, kind)
    contents = p.execute(raise_on_error=False)
    p = town.r.pipeline(transaction=True)
    for (key, kind), content in zip(bad, contents):
        raw = content if isinstance(content, str) else json.dumps(content, default=str,
                                                                  ensure_ascii=False)
        town.deadletter(f"key holds a {kind}, not a {expected[key]}", key, raw, pipe=p,
                        redis_type=kind)
        p.delete(key)
    p.execute()
    if log is not None:
        for key, kind in bad:
            log.warning("key of the wrong type dead-lettered and removed", key=key,
                        found=kind, expected=expected[key])
    return [k for k, _t in bad]
