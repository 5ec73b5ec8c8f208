"""Lua scripts of tinytownd (tinytownd/lua/*.lua), loaded once per client.

Each file's header documents its KEYS/ARGV and what it returns. `Scripts(r).NAME(keys=…, args=…,
client=pipe_or_client)` runs it with EVALSHA. On a plain client a NOSCRIPT reply (Redis restarted
with an empty script cache) reloads every script and retries. In a pipeline the EVALSHA is queued
as is (no SCRIPT EXISTS round trip per pipeline, unlike redis-py's Script objects): callers that
get a NoScriptError from a pipeline call `reload()` (the runtime does so when a worker crashes
and on every heartbeat that reports one).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).resolve().parent / "lua"
_SOURCES: dict[str, str] = {}


def source(name: str) -> str:
    if name not in _SOURCES:
        _SOURCES[name] = (LUA_DIR / f"{name}.lua").read_text()
    return _SOURCES[name]


class Script:
    __slots__ = ("owner", "name", "src", "sha")

    def __init__(self, owner: "Scripts", name: str):
        self.owner = owner
        self.name = name
        self.src = source(name)
        self.sha = hashlib.sha1(self.src.encode()).hexdigest()

    def __call__(self, keys=(), args=(), client=None):
        c = client if client is not None else self.owner.r
        if isinstance(c, Pipeline):
            if not self.owner.loaded:
                self.owner.reload()
            return c.evalsha(self.sha, len(keys), *keys, *args)
        if not self.owner.loaded:
            self.owner.reload()
        try:
            return c.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.owner.reload()
            return c.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """All scripts in lua/, as attributes named after the file (finish_task, take_round, …)."""

    def __init__(self, r: redis.Redis):
        self.r = r
        self.loaded = False
        self._all = []
        for path in sorted(LUA_DIR.glob("*.lua")):
            s = Script(self, path.stem)
            self._all.append(s)
            setattr(self, path.stem, s)

    def reload(self) -> None:
        """SCRIPT LOAD every script (one pipeline)."""
        p = self.r.pipeline(transaction=False)
        for s in self._all:
            p.script_load(s.src)
        p.execute()
        self.loaded = True
