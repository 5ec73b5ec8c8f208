"""Value checks of config fields and the error type: each check takes a YAML value and returns the
checked (maybe converted) value, or raises Invalid with the problem in a few words.

Every count, size, length and duration has an upper bound (below); the daemon was measured with
them (README "Configuration"). `etc/tinytownd.yaml` documents each one.
"""
from __future__ import annotations

import ipaddress
import math
import re
import reprlib
from dataclasses import field
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

# ----------------------------------------------------------------------------- bounds
MAX_FILE_BYTES = 1 << 20        # a config file larger than 1 MiB is refused before parsing
MAX_STR = 4096                  # any string without a bound of its own (paths, URLs, password)
MAX_NAME = 64                   # agent, CLI and role names; tags
MAX_COMMAND = 16384             # an agent CLI's command line (sh -c)
MAX_ENV_ENTRIES = 64            # per env mapping (agent_clis.*.env, agents[].env)
MAX_ENV_KEY = 128
MAX_ENV_VALUE = 8192
MAX_TAGS = 32                   # per agent
MAX_AGENT_COUNT = 1000          # agents[].count
MAX_AGENTS_TOTAL = 2000         # agents after count expansion (also bounds the agents list)
MAX_AGENT_CLIS = 256            # entries of agent_clis
MAX_CLI_TIMEOUT_S = 7 * 86400   # agent_clis.*.timeout_s (null = no limit)
MAX_MAXMEMORY = 1 << 40         # redis.maxmemory: 1 TiB
MAX_SAVE_RULES = 16             # redis.save pairs
MAX_PROBLEMS = 50               # lines of one ConfigError shown (then "... and N more")
MAX_PATTERNS = 32               # agent_clis.*.rate_limit_patterns / fatal_patterns entries
MAX_PATTERN = 512               # characters of one such pattern
MAX_COOLDOWN_S = 86400          # agent_clis.*.cooldown_s / cooldown_max_s

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def show(value: Any) -> str:
    """repr() for messages, bounded: a YAML alias bomb or a 1 MB string stays one short line."""
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    try:
        return _repr.repr(value)
    except Exception:   # pragma: no cover - exotic objects
        return f"<{type(value).__name__}>"


def _clean(text: str, limit: int) -> str:
    """One printable line: control characters (newlines, NEL, ...) and lone surrogates escaped."""
    text = text[:limit * 2]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ConfigError(Exception):
    """An invalid configuration. `str()` is `FILE: KEY: problem` (one line per problem)."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = [(_clean(str(k), 200), _clean(str(m), 1000)) for k, m in problems]
        lines = [f"{file}: {key}: {msg}" if key else f"{file}: {msg}"
                 for key, msg in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            lines.append(f"{file}: ... and {len(self.problems) - MAX_PROBLEMS} more problems")
        super().__init__("\n".join(lines))


class Invalid(Exception):
    """One problem; `sub` names a part of the value (an env variable, a list index)."""

    def __init__(self, msg: str, sub: str | None = None):
        self.msg = msg
        self.sub = sub


def opt(default: Any = None, *, live: bool = True, doc: str = "", check: Callable | None = None,
        factory: Callable | None = None, max_len: int = MAX_STR):
    """Declare a config field: its default, whether a reload applies it live, its check, and
    (strings) its maximum length."""
    meta = {"live": live, "doc": doc, "check": check, "max_len": max_len}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def text(value: str, max_len: int = MAX_STR, what: str = "") -> str:
    """A string the daemon can pass to the OS: bounded, no NUL, valid Unicode."""
    if len(value) > max_len:
        raise Invalid(f"{what}is {len(value)} characters long, over the maximum {max_len}")
    if "\0" in value:
        raise Invalid(f"{what}must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{what}is not valid Unicode (lone surrogate)") from None
    return value


def finite(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise Invalid(f"must be a finite number, not {show(value)}")
    return value


def byte_size(value: Any) -> int:
    """Bytes, or a string like 64mb / 1gb / 512k (Redis units, case-insensitive); at most 1 TiB."""
    if isinstance(value, bool):
        raise Invalid("must be a byte count or a size like 64mb")
    n = None
    if isinstance(value, int):
        if value < 0:
            raise Invalid("must be >= 0")
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]{1,16})\s*(b|k|kb|m|mb|g|gb)?\s*", value.lower())
        if m:
            mult = {"b": 1, None: 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                    "g": 1000**3, "gb": 1024**3}[m.group(2)]
            n = int(m.group(1)) * mult
    if n is None:
        raise Invalid(f"{show(value)} is not a size (use bytes or e.g. 64mb, 1gb)")
    if n > MAX_MAXMEMORY:
        raise Invalid(f"{n} bytes is above the maximum {MAX_MAXMEMORY} (1 TiB)")
    return n


byte_size.lo, byte_size.hi = 0, MAX_MAXMEMORY


def one_of(*allowed: str):
    def check(value):
        if not isinstance(value, str) or value not in allowed:
            raise Invalid(f"{show(value)} is not one of {', '.join(allowed)}")
        return value
    check.allowed = allowed
    return check


def in_range(lo=None, hi=None):
    def check(value):
        if isinstance(value, float) and math.isnan(value):
            raise Invalid("must be a finite number, not .nan")
        if lo is not None and value < lo:
            raise Invalid(f"{show(value)} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise Invalid(f"{show(value)} is above the maximum {hi}")
        return value
    check.lo, check.hi = lo, hi
    return check


def cli_timeout(value: float) -> float:
    """agent_clis.*.timeout_s: > 0 and at most a week (null, handled before, = no limit)."""
    if value <= 0:
        raise Invalid("must be > 0, or null for no limit")
    if value > MAX_CLI_TIMEOUT_S:
        raise Invalid(f"{show(value)} is above the maximum {MAX_CLI_TIMEOUT_S} (7 days); use "
                      "null for no limit")
    return value


cli_timeout.lo, cli_timeout.hi = 0, MAX_CLI_TIMEOUT_S


def pattern_list(value: list) -> list:
    """Regular expressions matched (case-insensitively) against a failed round's output: at
    most 32, each 1-512 characters and a valid Python regex."""
    if len(value) > MAX_PATTERNS:
        raise Invalid(f"{len(value)} patterns, over the maximum {MAX_PATTERNS}")
    for i, p in enumerate(value):
        try:
            if not isinstance(p, str) or not p:
                raise Invalid(f"must be a non-empty string, not {show(p)}")
            text(p, MAX_PATTERN)
            re.compile(p, re.IGNORECASE)
        except re.error as e:
            raise Invalid(f"{show(p)} is not a valid regular expression: {e}", sub=f"[{i}]") \
                from None
        except Invalid as e:
            raise Invalid(e.msg, sub=f"[{i}]") from None
    return [str(p) for p in value]


def save_rules(value: str) -> str:
    parts = value.split()
    if len(parts) % 2 or not all(re.fullmatch(r"[0-9]{1,10}", p) for p in parts) \
            or any(int(p) > 2**31 - 1 for p in parts):
        raise Invalid(f"{show(value)} must be pairs of '<seconds> <changes>' (each at most "
                      f"{2**31 - 1}) or \"\" to disable")
    if len(parts) > 2 * MAX_SAVE_RULES:
        raise Invalid(f"{len(parts) // 2} rules, over the maximum {MAX_SAVE_RULES}")
    return " ".join(parts)


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def town_name(value: str) -> str:
    if not value or not NAME_RE.fullmatch(value):
        raise Invalid(f"{show(value)} must be 1-64 characters of letters, digits, '.', '_' or '-' "
                       "(it becomes the key prefix tt:<name>:)")
    return value


def name(value: str, what: str = "name") -> str:
    """A CLI name, role or tag: 1-64 printable characters."""
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {show(value)}")
    if not value.strip():
        raise Invalid(f"{what} must not be empty")
    if len(value) > MAX_NAME:
        raise Invalid(f"{show(value)} is {len(value)} characters long, over the maximum {MAX_NAME}")
    if not value.isprintable():
        raise Invalid(f"{show(value)} must not contain control characters")
    text(value, MAX_NAME)
    return value


def role_name(value: str) -> str:
    return name(value, "role")


def cli_ref(value: str) -> str:
    return value if value == "" else name(value, "cli")


def tag_list(value: list) -> list:
    if len(value) > MAX_TAGS:
        raise Invalid(f"{len(value)} tags, over the maximum {MAX_TAGS}")
    for i, t in enumerate(value):
        try:
            name(t, "a tag")
        except Invalid as e:
            raise Invalid(e.msg, sub=f"[{i}]") from None
    return value


def nonempty(value: str) -> str:
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def base_ref(value: str) -> str:
    """workspace.base: a ref or commit for git (no spaces, not an option)."""
    if not value.strip() or value.startswith("-") or any(c.isspace() for c in value):
        raise Invalid(f"{show(value)} is not a git ref (e.g. HEAD, main, origin/main, a commit)")
    return value


def branch_pattern(value: str) -> str:
    """workspace.branch: known placeholders, and a valid branch name for a sample task."""
    from tinytownd.workspaces.naming import pattern_problem   # pure, stdlib only

    why = pattern_problem(value)
    if why:
        raise Invalid(f"{show(value)}: {why}")
    return value


ENV_KEY_RE = re.compile(r"[^=\0]+")


def env_map(value: dict) -> dict:
    """Environment variables for an agent's CLI: at most 64, names without '=' or NUL, values
    strings (or numbers) of at most 8192 characters."""
    if len(value) > MAX_ENV_ENTRIES:
        raise Invalid(f"{len(value)} variables, over the maximum {MAX_ENV_ENTRIES}")
    for k, v in value.items():
        if not isinstance(k, str) or not ENV_KEY_RE.fullmatch(k):
            raise Invalid(f"{show(k)} is not a variable name (a string without '=' or NUL)")
        sub = k if len(k) <= 64 else k[:61] + "..."
        try:
            text(k, MAX_ENV_KEY, "the name ")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise Invalid(f"must be a string, not {show(v)}")
            if isinstance(v, float):
                finite(v)
            if isinstance(v, str):
                text(v, MAX_ENV_VALUE)
        except Invalid as e:
            raise Invalid(e.msg, sub=sub) from None
    return value


def redis_url_value(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    try:
        parts = urlsplit(value)
        parts.port   # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise Invalid(f"not a valid URL: {e}") from None
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
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:   # not a URL we can take apart: hide everything before the host
        return re.sub(r"//[^@/]*@", "//****@", url)
    netloc = f"{user}:****@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))



def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
