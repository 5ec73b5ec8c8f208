"""Value checks of config fields and the error type: each check takes a YAML value and returns the
checked (maybe converted) value, or raises Invalid with the problem in a few words."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import field
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

class ConfigError(Exception):
    """An invalid configuration. `str()` is `FILE: KEY: problem` (one line per problem)."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {key}: {msg}" if key else f"{file}: {msg}"
                                   for key, msg in problems))


class Invalid(Exception):
    def __init__(self, msg: str):
        self.msg = msg


def opt(default: Any = None, *, live: bool = True, doc: str = "", check: Callable | None = None,
        factory: Callable | None = None):
    """Declare a config field: its default, whether a reload applies it live, its check."""
    meta = {"live": live, "doc": doc, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def byte_size(value: Any) -> int:
    """Bytes, or a string like 64mb / 1gb / 512k (Redis units, case-insensitive)."""
    if isinstance(value, bool):
        raise Invalid("must be a byte count or a size like 64mb")
    if isinstance(value, int):
        if value < 0:
            raise Invalid("must be >= 0")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(b|k|kb|m|mb|g|gb)?\s*", value.lower())
        if m:
            mult = {"b": 1, None: 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                    "g": 1000**3, "gb": 1024**3}[m.group(2)]
            return int(m.group(1)) * mult
    raise Invalid(f"{value!r} is not a size (use bytes or e.g. 64mb, 1gb)")


def one_of(*allowed: str):
    def check(value):
        if value not in allowed:
            raise Invalid(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return check


def in_range(lo=None, hi=None):
    def check(value):
        if lo is not None and value < lo:
            raise Invalid(f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise Invalid(f"{value} is above the maximum {hi}")
        return value
    return check


def save_rules(value: str) -> str:
    parts = value.split()
    if len(parts) % 2 or not all(p.isdigit() for p in parts):
        raise Invalid(f"{value!r} must be pairs of '<seconds> <changes>' or \"\" to disable")
    return " ".join(parts)


def town_name(value: str) -> str:
    if not value or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise Invalid(f"{value!r} must be 1-64 characters of letters, digits, '.', '_' or '-' "
                       "(it becomes the key prefix tt:<name>:)")
    return value


def redis_url_value(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise Invalid(f"scheme {parts.scheme or '(none)'!r} is not redis://, rediss:// or unix://")
    if parts.scheme == "unix" and not parts.path:
        raise Invalid("unix:// URL needs a socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise Invalid("URL needs a host")
    return value


def log_level(value: str) -> str:
    return one_of("debug", "info", "warning", "error", "critical")(str(value).lower())


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or `?password=` query) replaced by ****."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1****", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:****@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))



def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
