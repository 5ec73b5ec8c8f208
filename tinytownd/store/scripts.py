"""Lua scripts of tinytownd (tinytownd/lua/*.lua), loaded once per client.

Each file's header documents its KEYS/ARGV and what it returns. `Scripts(r).NAME(keys=…, args=…,
client=pipe_or_client)` runs it with EVALSHA. On a plain client a NOSCRIPT reply (Redis restarted
with an empty script cache) reloads every script and retries. In a pipeline the EVALSHA is queued
as is (no SCRIPT EXISTS round trip per pipeline, unlike redis-py's Script objects): callers that
get a NoScriptError from a pipeline call `reload()` (the runtime does so when a worker crashes
and on every heartbeat that reports one).

With `Scripts(r, keep=N)` (long-lived owners only: the runtime), on the plain client `r` the
EVALSHA is sent on a connection the Scripts object keeps checked out of r's pool (up to N of them;
`close()` hands them back, so a per-round script costs one hiredis-packed write and one
read instead of redis-py's ~60 µs of pool, retry and observability bookkeeping). The semantics
are redis-py's: a broken connection is dropped and the call is retried through the client (which
retries ConnectionError with backoff, never a timeout); error replies raise as usual.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from .durability import DURABLE
from .packing import pack as _pack

KEEP = 4   # connections the runtime's Scripts keeps out of its client's pool (fast path)

LUA_DIR = Path(__file__).resolve().parent / "lua"
_SOURCES: dict[str, str] = {}


# `--#include NAME` on a line of its own defines NAME.lua as a local function NAME(KEYS, ARGV)
# there, so a fused script calls a step instead of carrying a copy of it.
_INCLUDE = re.compile(r"^--#include (\w+)$", re.M)


def source(name: str) -> str:
    if name not in _SOURCES:
        text = (LUA_DIR / f"{name}.lua").read_text()
        _SOURCES[name] = _INCLUDE.sub(
            lambda m: f"local function {m.group(1)}(KEYS, ARGV)\n{source(m.group(1))}\nend",
            text)
    return _SOURCES[name]


# Two scripts run as one atomic call: NAME = (first, second). KEYS = the first's keys then the
# second's; ARGV = [number of the first's keys, number of the first's args, the first's args...,
# the second's args...]. Returns {first's reply, second's reply}. Each part is its file verbatim,
# wrapped in a function whose parameters KEYS and ARGV shadow the globals; both get one `fused`
# table as their `...` (nil when a script runs on its own), through which the first tells the
# second what it already knows and leaves the agent hash write (fused.key, fused.agent,
# fused.hdel) for the end, so the agent hash is written once per call. That write is made even
# when the second part fails (its error is returned after it).
COMPOSITES = {"round_ok_take": ("round_ok", "take_round")}


def composite_source(first: str, second: str) -> str:
    return (f"-- composite: {first} then {second} (scripts.py COMPOSITES)\n"
            f"local function _first(KEYS, ARGV, ...)\n{source(first)}\nend\n"
            f"local function _second(KEYS, ARGV, ...)\n{source(second)}\nend\n"
            "local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
            "local k1, a1, k2, a2 = {}, {}, {}, {}\n"
            "for i = 1, #KEYS do\n"
            "  if i <= nk then k1[#k1 + 1] = KEYS[i] else k2[#k2 + 1] = KEYS[i] end\n"
            "end\n"
            "for i = 3, #ARGV do\n"
            "  if i - 2 <= na then a1[#a1 + 1] = ARGV[i] else a2[#a2 + 1] = ARGV[i] end\n"
            "end\n"
            "local fused = {}\n"
            "local r1 = _first(k1, a1, fused)\n"
            "local ok, r2 = pcall(_second, k2, a2, fused)\n"
            "if fused.agent and #fused.agent > 0 then\n"
            "  redis.call('HSET', fused.key, unpack(fused.agent))\n"
            "end\n"
            "if fused.hdel then redis.call('HDEL', fused.key, 'current_task') end\n"
            "if not ok then\n"
            "  if type(r2) == 'table' and r2['err'] then return r2 end\n"
            "  return redis.error_reply(tostring(r2))\n"
            "end\n"
            "return {r1, r2}\n")


class Script:
    __slots__ = ("owner", "name", "src", "sha", "durable")

    def __init__(self, owner: "Scripts", name: str, src: str | None = None):
        self.owner = owner
        self.name = name
        self.src = src if src is not None else source(name)
        self.sha = hashlib.sha1(self.src.encode()).hexdigest()
        self.durable = name in DURABLE     # WAITed after when the owner has a Durability

    def command(self, keys=(), args=()) -> tuple:
        """This script's call as one command, for a raw pipeline (store/raw_pipe.py)."""
        if not self.owner.loaded:
            self.owner.reload()
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, keys=(), args=(), client=None):
        c = client if client is not None else self.owner.r
        cmd = self.command(keys, args)
        if isinstance(c, Pipeline):
            return c.execute_command(*cmd)
        call = self.owner._call if c is self.owner.r and self.owner.keep else \
            (lambda *a: c.execute_command(*a))
        if self.durable and self.owner.durability is not None:
            call = (lambda *a: self.owner._call_durable(c, a))
        try:
            return call(*cmd)
        except NoScriptError:
            self.owner.reload()
            return call(*cmd)


class Scripts:
    """All scripts in lua/, as attributes named after the file (finish_task, take_round, …)."""

    def __init__(self, r: redis.Redis, keep: int = 0):
        self.r = r
        self.keep = keep
        self.loaded = False
        self.durability = None     # store/durability.Durability: WAIT after DURABLE scripts
        self._free: list = []      # connections kept out of r's pool (fast path)
        self._pid = os.getpid()
        self._all = []
        for path in sorted(LUA_DIR.glob("*.lua")):
            s = Script(self, path.stem)
            self._all.append(s)
            setattr(self, path.stem, s)
        for name, (first, second) in COMPOSITES.items():
            s = Script(self, name, composite_source(first, second))
            self._all.append(s)
            setattr(self, name, s)

    def _call(self, *cmd):
        """One command on a kept connection: packed write, one read (see the module doc)."""
        if self._pid != os.getpid():        # forked: the kept sockets belong to the parent
            self._free, self._pid = [], os.getpid()
        conn = self._kept()
        try:
            conn.send_packed_command([_pack(cmd)])
            res = conn.read_response()
        except redis.ResponseError:
            self._put(conn)                 # an error reply: the connection is fine
            raise
        except (redis.ConnectionError, OSError) as e:
            conn.disconnect()
            self._put(conn)
            if isinstance(e, (redis.AuthenticationError, redis.TimeoutError)):
                raise
            return self.r.execute_command(*cmd)   # redis-py's retry with backoff
        except BaseException:
            conn.disconnect()               # e.g. killed between write and read
            self._put(conn)
            raise
        self._put(conn)
        return res

    def _call_durable(self, client, cmd):
        """`cmd` and a WAIT on one connection (kept, or from `client`'s pool); a broken
        connection is retried on a fresh one with the pool's backoff, as redis-py would."""
        if self._pid != os.getpid():
            self._free, self._pid = [], os.getpid()
        kept = client is self.r and self.keep
        pool = client.connection_pool
        conn = self._kept() if kept else pool.get_connection()
        packed = _pack(cmd)
        try:
            res = conn.retry.call_with_retry(
                lambda: self.durability.call(conn, packed), lambda _e: conn.disconnect())
        except redis.ResponseError:
            self._put(conn) if kept else pool.release(conn)
            raise
        except BaseException:
            conn.disconnect()
            self._put(conn) if kept else pool.release(conn)
            raise
        self._put(conn) if kept else pool.release(conn)
        return res

    def _kept(self):
        """A kept connection, or one from the pool. A kept one its pool would not take back (one
        to a former primary, which the primary watch shut down) goes back through the pool,
        whose get_connection hands out one to the primary of now."""
        free, pool = self._free, self.r.connection_pool
        while free:
            conn = free.pop()
            if pool.owns_connection(conn):
                return conn
            pool.release(conn)
        return pool.get_connection()

    def _put(self, conn) -> None:
        """Keep `conn` for the next call, unless its pool would not take it back either (a
        connection to a former primary: redis_ha.SentinelPool.owns_connection)."""
        if len(self._free) < self.keep and self.r.connection_pool.owns_connection(conn):
            self._free.append(conn)
        else:
            self.r.connection_pool.release(conn)

    def close(self) -> None:
        """Hand the kept connections back to the pool."""
        free, self._free = self._free, []
        for conn in free:
            try:
                self.r.connection_pool.release(conn)
            except Exception:
                pass

    def reload(self) -> None:
        """SCRIPT LOAD every script (one pipeline)."""
        p = self.r.pipeline(transaction=False)
        for s in self._all:
            p.script_load(s.src)
        p.execute()
        self.loaded = True
