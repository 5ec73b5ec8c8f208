"""Keys that hold the wrong Redis type: moved to the dead-letter list, so nothing stays stuck.

Every key tinytownd reads has one type (store/keys.py). A client that writes another type there
(a string where an inbox list belongs, a list where a task hash belongs) makes every command on
it fail with WRONGTYPE, and whatever reads it would fail on the same input for ever. When a reader
meets WRONGTYPE it hands the keys it was using to `quarantine`: each key whose type is neither the
expected one nor absent is read (bounded), dead-lettered with the reason and its content, and
deleted, in one MULTI/EXEC (WATCHed, so only a key still of the wrong type goes). The reader then goes on as if the key were empty.
"""
from __future__ import annotations

import json

import redis

from . import records

READ_MAX = 100          # elements of a list/set/zset/stream kept in the dead-letter entry
WATCH_TRIES = 5         # re-checks when a bad key changes while it is being moved away
RACES_IN_A_ROW = 3      # WRONGTYPEs with no key left to move that a reader lets pass


class Races:
    """A reader's count of WRONGTYPEs that no key explains any more: another reader moved the
    shared key (the backlog, the event stream) first. A few in a row are that race and the reader
    goes on as if the key were empty; more, and the error is not about a key it knows — a bug,
    which the reader raises."""

    def __init__(self) -> None:
        self.in_a_row = 0

    def tolerate(self, moved) -> bool:
        """After quarantine(): True when the reader should go on (something moved, or a race)."""
        if moved:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        return self.in_a_row <= RACES_IN_A_ROW


def is_wrongtype(e: BaseException) -> bool:
    return isinstance(e, redis.ResponseError) and "WRONGTYPE" in str(e)


def _as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _read(p, key: str, kind: str):
    """The key's content, bounded (p: a client, or a pipeline in immediate mode)."""
    if kind == "string":
        return p.getrange(key, 0, records.DEADLETTER_RAW_MAX)
    if kind == "list":
        return p.lrange(key, 0, READ_MAX - 1)
    if kind == "hash":
        return p.hscan(key, 0, count=READ_MAX)
    if kind == "set":
        return p.sscan(key, 0, count=READ_MAX)
    if kind == "zset":
        return p.zrange(key, 0, READ_MAX - 1, withscores=True)
    if kind == "stream":
        return p.xrange(key, count=READ_MAX)
    return p.type(key)


def quarantine(town, expected: dict[str, str], *, log=None) -> list[str]:
    """Dead-letter and delete the keys of `expected` (key → Redis type) that hold another type.
    Returns the keys moved.

    The keys found bad are WATCHed while they are read and deleted: when another reader (or the
    client that wrote the poison) replaces such a key meanwhile — say it quarantined the same key
    first and has already re-created it with the right type — the EXEC aborts and the type is
    checked again, so a good key is never deleted."""
    keys = list(expected)
    p = town.r.pipeline(transaction=False)
    for key in keys:
        p.type(key)
    suspects = [k for k, t in zip(keys, p.execute()) if t not in ("none", expected[k])]
    if not suspects:
        return []
    for _ in range(WATCH_TRIES):
        with town.r.pipeline(transaction=True) as p:
            try:
                p.watch(*suspects)
                bad = [(k, t) for k in suspects
                       if (t := _as_str(p.type(k))) not in ("none", expected[k])]
                if not bad:
                    return []
                contents = []
                for key, kind in bad:
                    try:
                        contents.append(_read(p, key, kind))
                    except redis.ResponseError as e:
                        contents.append(str(e))
                p.multi()
                for (key, kind), content in zip(bad, contents):
                    raw = content if isinstance(content, str) else json.dumps(
                        content, default=str, ensure_ascii=False)
                    town.deadletter(f"key holds a {kind}, not a {expected[key]}", key, raw,
                                    pipe=p, redis_type=kind)
                    p.delete(key)
                p.execute()
                break
            except redis.WatchError:
                continue
    else:
        return []
    if log is not None:
        for key, kind in bad:
            log.warning("key of the wrong type dead-lettered and removed", key=key,
                        found=kind, expected=expected[key])
    return [k for k, _t in bad]
