"""What changed between two configs, leaf by leaf, each marked live (a reload applies it) or
restart-only."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .schema import Config

@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    live: bool

    def describe(self) -> str:
        def show(v):
            secret = "password" in self.key or self.key.endswith(".token")
            s = "****" if secret and v else repr(v)
            return s if len(s) < 80 else s[:77] + "..."
        how = "applied" if self.live else "needs a restart"
        return f"{self.key}: {show(self.old)} -> {show(self.new)} ({how})"


def _flatten(obj: Any, prefix: str, out: dict[str, tuple[Any, bool]], live: bool) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if not f.compare:       # path, env_redis_url, ...: not keys of the file
                continue
            _flatten(getattr(obj, f.name), f"{prefix}{f.name}.", out,
                     live and f.metadata.get("live", True))
    elif isinstance(obj, dict) and prefix.startswith("agent_clis."):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out, live)
    else:
        out[prefix.rstrip(".")] = (obj, live)


def diff(old: Config, new: Config) -> list[Change]:
    """Every leaf that differs, each marked live (applied on reload) or restart-only."""
    a: dict[str, tuple[Any, bool]] = {}
    b: dict[str, tuple[Any, bool]] = {}
    _flatten(old, "", a, True)
    _flatten(new, "", b, True)
    changes = []
    for key in sorted(set(a) | set(b)):
        va, la = a.get(key, (None, True))
        vb, lb = b.get(key, (None, True))
        if va != vb:
            changes.append(Change(key, va, vb, la and lb))
    if old.env_redis_url != new.env_redis_url:
        changes.append(Change("REDIS_URL", old.env_redis_url, new.env_redis_url, False))
    return changes


def keep_old(new: Config, old: Config, key: str) -> Config:
    """`new` with the value at dotted `key` taken from `old`: a reload keeps restart-only keys
    as they run."""
    if key == "REDIS_URL":
        return dataclasses.replace(new, redis=old.redis, env_redis_url=old.env_redis_url)

    def go(n: Any, o: Any, parts: list[str]) -> Any:
        if not dataclasses.is_dataclass(n) or not parts:
            return o
        name = parts[0]
        if not hasattr(n, name):
            return n
        sub_n, sub_o = getattr(n, name), getattr(o, name)
        return dataclasses.replace(n, **{name: go(sub_n, sub_o, parts[1:])})

    return go(new, old, key.split("."))
