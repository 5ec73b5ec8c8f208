"""tt's per-mission dispatch lease (F2, B1): `tt:<town>:mission:<mid>:dispatch_lock`.

acquire  `SET lock token NX EX ttl`            (so `tt mission dispatch` and tinytownd exclude
refresh  Lua `if GET == token then EXPIRE`      each other per mission)
release  Lua `if GET == token then DEL`

Unlike tt, the lease is held across ticks and refreshed every ttl/3 by the engine. Fencing: the
engine WATCHes the lock key and checks `GET == token` before every transaction (see engine.py), so
a daemon that lost its lease cannot write; a failed refresh drops the mission at once.
"""
from __future__ import annotations

import math
import time

import redis

from tinytownd.store.keys import Keys

REFRESH_LUA = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
               "return redis.call('EXPIRE', KEYS[1], ARGV[2]) else return 0 end")
RELEASE_LUA = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
               "return redis.call('DEL', KEYS[1]) else return 0 end")


class Leases:
    def __init__(self, r: redis.Redis, keys: Keys, token: str, ttl_s: float):
        self.r = r
        self.k = keys
        self.token = token
        self.ttl_s = ttl_s
        self._refresh = r.register_script(REFRESH_LUA)
        self._release = r.register_script(RELEASE_LUA)

    @property
    def ex(self) -> int:
        return max(1, int(math.ceil(self.ttl_s)))

    def acquire(self, mid: str) -> bool:
        ok = bool(self.r.set(self.k.mission_lock(mid), self.token, nx=True, ex=self.ex))
        if ok:
            try:
                self.r.hincrby(self.k.mission_meta(mid), "fence", 1)
            except redis.RedisError:
                pass
        return ok

    def refresh(self, mid: str) -> bool:
        return bool(self._refresh(keys=[self.k.mission_lock(mid)], args=[self.token, self.ex]))

    def release(self, mid: str) -> bool:
        return bool(self._release(keys=[self.k.mission_lock(mid)], args=[self.token]))

    def holder(self, mid: str) -> str | None:
        return self.r.get(self.k.mission_lock(mid))

    def holds(self, mid: str) -> bool:
        return self.holder(mid) == self.token


class LeaseState:
    """What the engine remembers about a lease it holds."""

    __slots__ = ("mid", "acquired", "refreshed", "lost")

    def __init__(self, mid: str):
        self.mid = mid
        self.acquired = self.refreshed = time.monotonic()
        self.lost = False
