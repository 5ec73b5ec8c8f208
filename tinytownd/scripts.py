"""Lua scripts of tinytownd (tinytownd/lua/*.lua), registered on a client.

Each file's header documents its KEYS/ARGV and what it returns. `Scripts(r).NAME(keys=…, args=…,
client=pipe_or_client)` runs it with EVALSHA (redis-py reloads it on NOSCRIPT, also in pipelines).
"""
from __future__ import annotations

from pathlib import Path

import redis

LUA_DIR = Path(__file__).resolve().parent / "lua"
_SOURCES: dict[str, str] = {}


def source(name: str) -> str:
    if name not in _SOURCES:
        _SOURCES[name] = (LUA_DIR / f"{name}.lua").read_text()
    return _SOURCES[name]


class Scripts:
    """All scripts in lua/, as attributes named after the file (finish_task, take_round, …)."""

    def __init__(self, r: redis.Redis):
        self._r = r
        for path in sorted(LUA_DIR.glob("*.lua")):
            setattr(self, path.stem, r.register_script(source(path.stem)))
