"""The `retry-timer` service: retry envelopes whose time has come go back to their queues.

A failed round parks its messages in the delayed zset (score = due time in ms) in the same Lua
call as its ack; lua/move_due.lua moves up to MOVE_MAX due ones per call back to their list
(head for urgent mail, tail for the inbox, as tt requeues) and dead-letters an envelope it cannot
read or deliver.
"""
from __future__ import annotations

import time

import redis

from tinytownd.store import quarantine
from tinytownd.store.records import DEADLETTER_KEPT
from tinytownd.store.refusals import transient
from tinytownd.store.wire import json_ts

MOVE_MAX = 100
IDLE_WAIT_S = 0.2


def retry_timer(rt) -> None:
    k = rt.keys
    pause = 0.0
    while not rt.stopping.is_set():
        try:
            n = int(rt.scripts.move_due(keys=[k.delayed, k.deadletter],
                                        args=[int(time.time() * 1000), MOVE_MAX, json_ts(),
                                              k.prefix, DEADLETTER_KEPT]))
            pause = 0.0
        except redis.RedisError as e:
            n = 0
            if quarantine.is_wrongtype(e):
                quarantine.quarantine(rt.town, {k.delayed: "zset", k.deadletter: "list"},
                                      log=rt.log)
            elif transient(e):
                pause = rt.patience.failed(e, pause)
            else:
                rt.log.warning("retry timer failed", error=str(e))
                pause = 1.0
        rt.progress("retry-timer")
        if n < MOVE_MAX:
            rt.stopping.wait(max(IDLE_WAIT_S, pause))
