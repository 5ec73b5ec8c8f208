"""What every command module shares: opening the town's Redis, printing, and exit codes.

Commands talk to Redis directly (the daemon need not run). Redis and town come from the config
(-c, else $TINYTOWND_CONFIG, else the default path); where a command allows it, a missing config
file falls back to REDIS_URL + TINYTOWN_TOWN, as the daemon sets them for agent CLIs.
Exit codes: 65 unknown/ambiguous reference or refused transition, 69 Redis unreachable, 74 Redis
refused the write (out of memory / cannot save: nothing applied), 78 config.
Only stdlib + tinytownd.cli/exitcodes at import time (see cli.py); the rest is imported lazily.
"""
from __future__ import annotations

import json
import os
import sys

from tinytownd import exitcodes


class CommandError(Exception):
    """A command fails with this exit code and message."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


def say_error(prefix: str, msg: str) -> None:
    print(f"{prefix}: {msg}", file=sys.stderr)


def load_config(args, *, env_fallback: bool):
    """The config, or None when there is no file and `env_fallback` lets REDIS_URL +
    TINYTOWN_TOWN stand in. Returns (config or None, redis URL, town name)."""
    from tinytownd import config

    path = config.discover(args.config)
    if env_fallback and not os.path.exists(path):
        url = (os.environ.get("REDIS_URL") or "").strip()
        town = (os.environ.get("TINYTOWN_TOWN") or "").strip()
        if not url or not town:
            raise CommandError(exitcodes.CONFIG, f"{path}: file not found (and REDIS_URL and "
                                                 "TINYTOWN_TOWN are not both set)")
        return None, url, town
    try:
        cfg = config.load(path, check_files=False)
    except config.ConfigError as e:
        raise CommandError(exitcodes.CONFIG, str(e))
    return cfg, cfg.redis_url(), cfg.town.name


def open_redis(args, *, env_fallback: bool = True):
    """(config or None, a checked Redis client, Keys). CommandError 78 / 69."""
    from tinytownd.config import redact_url
    from tinytownd.daemon import redis_clients
    from tinytownd.store.keys import Keys

    cfg, url, town = load_config(args, env_fallback=env_fallback)
    r = redis_clients.client_for_url(url, max_connections=4, cfg=cfg)
    try:
        redis_clients.check_server(r, redact_url(url))
    except redis_clients.RedisUnavailable as e:
        raise CommandError(exitcodes.UNAVAILABLE, str(e))
    return cfg, r, Keys(town)


def open_town(args, *, env_fallback: bool = True):
    """(Town, config or None)."""
    from tinytownd import logs
    from tinytownd.store.town import Town

    cfg, r, keys = open_redis(args, env_fallback=env_fallback)
    town = Town(r, keys, log=logs.get_logger("cli", town=keys.town))
    if cfg is not None:
        town.task_events = cfg.runtime.task_events
    return town, cfg


def run(fn, *, prefix: str = "tinytownd") -> int:
    """Run `fn()` and turn its failures into exit codes with a one-line message."""
    import redis

    try:
        return int(fn() or 0)
    except CommandError as e:
        say_error(prefix, str(e))
        return e.code
    except (LookupError, ValueError) as e:
        say_error(prefix, str(e.args[0] if e.args else e))
        return exitcodes.DATAERR
    except redis.ResponseError as e:
        from tinytownd.store.refusals import EXPLAIN, refusal

        kind = refusal(e)
        say_error(prefix, EXPLAIN[kind] if kind else f"Redis error: {e}")
        return exitcodes.REFUSED if kind in ("oom", "misconf") else exitcodes.UNAVAILABLE
    except redis.RedisError as e:
        say_error(prefix, f"Redis error: {e}")
        return exitcodes.UNAVAILABLE


def output(args, obj, human: str) -> None:
    """JSON (compact, one line) with --json, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str))
    else:
        print(human)


def table(rows: list[list], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
