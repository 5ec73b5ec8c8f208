"""Ownership leases: one owner at a time for an agent (runtime) or a mission (mission engine).

A lease is a string key holding the owner token, with an expiry (lua/lease.lua): acquire is
SET NX PX (or re-arming our own), renewal is compare-and-PEXPIRE, release is compare-and-DEL. A
lease that lapses lets another daemon take over. The agent lease (`keys.agent_lease`) and the
mission lease (tt's `dispatch_lock`, which `tt mission dispatch` takes with SET NX EX: the same
protocol) are both `Leases` over a different key.

Owner tokens made by `owner_token` are "<instance id> <host> <pid>": a daemon restarted on the
same host after a crash need not wait for the expiry, because `acquire` takes over (compare-and-
SET) a lease whose token names this host and a pid that no longer exists.
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import redis

from .scripts import Scripts

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
    """Leases of one kind: `key_of(name)` is the lease key of an agent id or a mission id."""

    def __init__(self, r: redis.Redis, key_of: Callable[[str], str], owner: str, ttl_s: float,
                 scripts: Scripts | None = None):
        self.r = r
        self.key_of = key_of
        self.owner = owner
        self.ttl_s = ttl_s
        self.scripts = scripts or Scripts(r)

    @property
    def ttl_s(self) -> float:
        return self._ttl_ms / 1000

    @ttl_s.setter
    def ttl_s(self, value: float) -> None:
        self._ttl_ms = max(100, int(value * 1000))

    def _op(self, op: str, name: str, *extra, client=None):
        return self.scripts.lease(keys=[self.key_of(name)],
                                  args=[op, self.owner, self._ttl_ms, *extra], client=client)

    def acquire(self, name: str) -> bool:
        if int(self._op("acquire", name)):
            return True
        cur = self.r.get(self.key_of(name))
        if cur and _dead_local(cur):
            return bool(int(self._op("steal", name, cur)))
        return False

    def renew(self, name: str) -> bool:
        return bool(int(self._op("renew", name)))

    def renew_command(self, name: str) -> tuple:
        """The renewal of `name` as one command for a raw pipeline (reply: 1 kept, 0 lost,
        2 was gone and taken back)."""
        return self.scripts.lease.command(keys=[self.key_of(name)],
                                          args=["renew", self.owner, self._ttl_ms])

    def release(self, name: str) -> bool:
        return bool(int(self._op("release", name)))

    def release_all(self, names) -> None:
        """Release each lease we hold of `names` (shutdown: best effort, Redis may be gone)."""
        for name in list(names):
            try:
                self.release(name)
            except redis.RedisError:
                pass

    def holder(self, name: str) -> str | None:
        return self.r.get(self.key_of(name))

    def holds(self, name: str) -> bool:
        return self.holder(name) == self.owner
