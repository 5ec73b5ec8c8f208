"""The state of an agent CLI for the whole town: its cooldown after a rate limit and its pause
after a fatal error, in `tt:<town>:tinytownd:cli:<name>` (keys.cli), shared by every daemon on
the Redis. Agents never read it here: take_round.lua checks it in the same call as the take, so a
CLI that is not cooling down costs no extra round trip.
"""
from __future__ import annotations

import random
import time

import redis

from .keys import Keys
from .scripts import Scripts
from .wire import hash_ts

STATE_FIELDS = ("cooldown_until", "cooldown_level", "cooldown_reason", "cooldown_s", "paused",
                "paused_reason", "paused_at")
REASON_MAX = 500


def now_ms() -> int:
    return int(time.time() * 1000)


def describe(name: str, h: dict, now: int | None = None) -> dict:
    """A CLI's state hash for status and progress: {cli, paused, paused_reason, cooldown_until
    (ISO), cooldown_left_s, cooldown_reason}; only what is in force."""
    now = now_ms() if now is None else now
    out: dict = {"cli": name}
    if h.get("paused"):
        out.update(paused=True, paused_reason=h.get("paused_reason") or "",
                   paused_at=h.get("paused_at"))
    try:
        until = int(float(h.get("cooldown_until") or 0))
    except (ValueError, OverflowError):       # junk, "nan", "inf": no cooldown in force
        until = 0
    until = min(until, 253402300799000)       # (junk beyond year 9999: shown as then)
    if until > now:
        out.update(cooldown_until=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until / 1000)),
                   cooldown_left_s=round((until - now) / 1000, 1),
                   cooldown_reason=h.get("cooldown_reason") or "",
                   cooldown_level=int(float(h.get("cooldown_level") or 0)))
    return out


class CliState:
    """Cooldowns and pauses of a town's agent CLIs."""

    def __init__(self, r: redis.Redis, keys: Keys, scripts: Scripts | None = None):
        self.r = r
        self.keys = keys
        self.scripts = scripts or Scripts(r)

    def rate_limited(self, name: str, *, cooldown_s: float, cooldown_max_s: float,
                     named_s: float | None, reason: str, jitter: float) -> dict:
        """Start or extend the cooldown (lua/cli_rate_limited.lua); {until_ms, now_ms, level,
        set}."""
        until, now, level, set_ = self.scripts.cli_rate_limited(
            keys=[self.keys.cli(name)],
            args=[int(cooldown_s * 1000), int(cooldown_max_s * 1000),
                  "" if named_s is None else int(named_s * 1000), random.random(), jitter,
                  reason[:REASON_MAX]])
        return {"until_ms": int(until), "now_ms": int(now), "level": int(level),
                "set": bool(int(set_))}

    def pause(self, name: str, reason: str, pipe=None) -> None:
        """A fatal error: no agent of the CLI takes work until resume() (or a reload)."""
        (pipe if pipe is not None else self.r).hset(self.keys.cli(name), mapping={
            "paused": "1", "paused_reason": reason[:REASON_MAX], "paused_at": hash_ts()})

    def resume(self, name: str) -> dict:
        """End the pause and the cooldown; returns what was in force."""
        key = self.keys.cli(name)
        p = self.r.pipeline(transaction=True)
        p.hgetall(key)
        p.hdel(key, *STATE_FIELDS)
        was = p.execute()[0] or {}
        return describe(name, was)

    def clear_pauses(self, names) -> list[str]:
        """A reload or start: the pauses of these CLIs end (cooldowns stay: the provider's
        limit has not changed). Returns the names that were paused."""
        names = list(names)
        if not names:
            return []
        p = self.r.pipeline(transaction=False)
        for n in names:
            p.hdel(self.keys.cli(n), "paused", "paused_reason", "paused_at")
        return [n for n, x in zip(names, p.execute()) if x]

    def read(self, names) -> dict[str, dict]:
        """name → describe() of each CLI (empty state included)."""
        names = sorted(set(names))
        if not names:
            return {}
        p = self.r.pipeline(transaction=False)
        for n in names:
            p.hgetall(self.keys.cli(n))
        now = now_ms()
        return {n: describe(n, h or {}, now) for n, h in zip(names, p.execute())}
