"""Per-agent ownership leases: two daemons never run the same agent.

The lease `keys.agent_lease(aid)` holds the owner token "<instance id> <host> <pid>" with a PX
expiry. Acquire is SET NX PX (or re-arming our own), renewal is compare-and-PEXPIRE, release is
compare-and-DEL (lua/lease.lua). A lease that lapses lets another daemon take the agent over. A
daemon restarted on the same host after a crash need not wait for the expiry: `acquire` takes over
a lease whose token names this host and a pid that no longer exists (compare-and-SET).
"""
from __future__ import annotations

import os
import socket

import redis

from tinytownd.store.keys import Keys
from tinytownd.store.scripts import Scripts

HOST = socket.gethostname()


def owner_token(instance_id: str) -> str:
    return f"{instance_id} {HOST} {os.getpid()}"


def _dead_local(token: str) -> bool:
    """True when the token names a process on this host that no longer exists."""
    parts = token.split(" ")
    if len(parts) != 3 or parts[1] != HOST:
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Leases:
    def __init__(self, r: redis.Redis, keys: Keys, owner: str, ttl_s: float,
                 scripts: Scripts | None = None):
        self.r = r
        self.k = keys
        self.owner = owner
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self.s = scripts or Scripts(r)

    def acquire(self, aid: str) -> bool:
        key = self.k.agent_lease(aid)
        if int(self.s.lease(keys=[key], args=["acquire", self.owner, self.ttl_ms])):
            return True
        cur = self.r.get(key)
        if cur and _dead_local(cur):
            return bool(int(self.s.lease(keys=[key], args=["steal", self.owner, self.ttl_ms, cur])))
        return False

    def renew_many(self, aids: list[str], pipe=None) -> None:
        """Queue compare-and-PEXPIRE for each aid on `pipe` (results: 1 kept, 0 lost)."""
        for aid in aids:
            self.s.lease(keys=[self.k.agent_lease(aid)], args=["renew", self.owner, self.ttl_ms],
                         client=pipe)

    def renew(self, aid: str) -> bool:
        return bool(int(self.s.lease(keys=[self.k.agent_lease(aid)],
                                     args=["renew", self.owner, self.ttl_ms])))

    def release(self, aid: str) -> bool:
        return bool(int(self.s.lease(keys=[self.k.agent_lease(aid)],
                                     args=["release", self.owner, self.ttl_ms])))

    def holder(self, aid: str) -> str | None:
        return self.r.get(self.k.agent_lease(aid))
