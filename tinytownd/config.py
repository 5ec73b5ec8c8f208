"""The YAML configuration: schema, validation, path resolution, environment overrides, diff.

The schema is declarative: each section is a frozen dataclass whose fields carry their check, their
documentation and whether a change applies live on reload (`live=True`) or needs a restart. The
loader walks the YAML against it, so unknown keys (with a did-you-mean), wrong types and bad ranges
are reported as `FILE: KEY: problem` and nothing half-valid is ever returned.

Pure: no Redis, no gevent. `etc/tinytownd.yaml` documents every default listed here.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import yaml

from .wire import RESERVED_AGENT_NAMES

DEFAULT_PATH = "/etc/tinytownd/tinytownd.yaml"
ENV_CONFIG = "TINYTOWND_CONFIG"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
BLOCK_HEADROOM = 16  # blocking connections beyond one per agent


class ConfigError(Exception):
    """An invalid configuration. `str()` is `FILE: KEY: problem` (one line per problem)."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {key}: {msg}" if key else f"{file}: {msg}"
                                   for key, msg in problems))


class _Invalid(Exception):
    def __init__(self, msg: str):
        self.msg = msg


def opt(default: Any = None, *, live: bool = True, doc: str = "", check: Callable | None = None,
        factory: Callable | None = None):
    """Declare a config field: its default, whether a reload applies it live, its check."""
    meta = {"live": live, "doc": doc, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- value checks
def _size(value: Any) -> int:
    """Bytes, or a string like 64mb / 1gb / 512k (Redis units, case-insensitive)."""
    if isinstance(value, bool):
        raise _Invalid("must be a byte count or a size like 64mb")
    if isinstance(value, int):
        if value < 0:
            raise _Invalid("must be >= 0")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(b|k|kb|m|mb|g|gb)?\s*", value.lower())
        if m:
            mult = {"b": 1, None: 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
                    "g": 1000**3, "gb": 1024**3}[m.group(2)]
            return int(m.group(1)) * mult
    raise _Invalid(f"{value!r} is not a size (use bytes or e.g. 64mb, 1gb)")


def _choice(*allowed: str):
    def check(value):
        if value not in allowed:
            raise _Invalid(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return check


def _range(lo=None, hi=None):
    def check(value):
        if lo is not None and value < lo:
            raise _Invalid(f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise _Invalid(f"{value} is above the maximum {hi}")
        return value
    return check


def _save(value: str) -> str:
    parts = value.split()
    if len(parts) % 2 or not all(p.isdigit() for p in parts):
        raise _Invalid(f"{value!r} must be pairs of '<seconds> <changes>' or \"\" to disable")
    return " ".join(parts)


def _town_name(value: str) -> str:
    if not value or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise _Invalid(f"{value!r} must be 1-64 characters of letters, digits, '.', '_' or '-' "
                       "(it becomes the key prefix tt:<name>:)")
    return value


def _redis_url(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise _Invalid(f"scheme {parts.scheme or '(none)'!r} is not redis://, rediss:// or unix://")
    if parts.scheme == "unix" and not parts.path:
        raise _Invalid("unix:// URL needs a socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise _Invalid("URL needs a host")
    return value


def _log_level(value: str) -> str:
    return _choice("debug", "info", "warning", "error", "critical")(str(value).lower())


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


# ----------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class TownSection:
    name: str = opt("tinytown", live=False, check=_town_name,
                    doc="town name; keys are tt:<name>:…")
    root: str | None = opt(None, live=False,
                           doc="holds sockets, data, logs; null = $STATE_DIRECTORY, else the "
                               "config file's directory. Relative paths resolve against it.")


@dataclass(frozen=True)
class TlsSection:
    enabled: bool = opt(False, live=False)
    cert: str | None = opt(None, live=False)
    key: str | None = opt(None, live=False)
    ca_cert: str | None = opt(None, live=False)
    auth_clients: bool = opt(False, live=False, doc="require client certificates")


@dataclass(frozen=True)
class RedisSection:
    url: str | None = opt(None, live=False, check=_redis_url)
    socket: str | None = opt("redis.sock", live=False)
    bind: str = opt("127.0.0.1", live=False)
    port: int = opt(0, live=False, check=_range(0, 65535))
    password: str | None = opt(None, live=False)
    tls: TlsSection = opt(factory=TlsSection, live=False)
    save: str = opt("3600 1 300 100 60 10000", check=_save)
    appendonly: bool = opt(True)
    appendfsync: str = opt("everysec", check=_choice("always", "everysec", "no"))
    maxmemory: int = opt(0, check=_size)
    maxmemory_policy: str = opt("noeviction", check=_choice(
        "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
        "volatile-lfu", "volatile-random", "volatile-ttl"))
    server: str = opt("redis-server", live=False)
    data_dir: str = opt("redis", live=False, doc="dir for RDB/AOF/log (under the town root)")
    pool_size: int = opt(64, live=False, check=_range(4, 10000),
                         doc="connections for ordinary commands")
    start_timeout_s: float = opt(10.0, check=_range(0.5, 600))
    restart_backoff_max_s: float = opt(10.0, check=_range(0.1, 600))


@dataclass(frozen=True)
class ControlSection:
    socket: str = opt("tinytownd.sock", live=False)


@dataclass(frozen=True)
class LoggingSection:
    level: str = opt("info", check=_log_level)
    file: str | None = opt(None)


@dataclass(frozen=True)
class DaemonSection:
    drain_timeout_s: float = opt(30.0, check=_range(0, 86400),
                                 doc="SIGTERM/stop: time for running rounds to finish")
    pidfile: str | None = opt(None, live=False, doc="used by --daemonize when --pidfile is absent")
    watchdog_stall_s: float = opt(30.0, check=_range(1, 3600),
                                  doc="WATCHDOG=1 stops when a service made no progress for this")


@dataclass(frozen=True)
class RuntimeSection:
    heartbeat_interval_s: float = opt(5.0, check=_range(0.1, 10))
    block_timeout_s: float = opt(1.0, check=_range(0.05, 30),
                                 doc="server-side BLMOVE timeout of an idle agent")
    lease_ttl_s: float = opt(30.0, check=_range(1, 3600))
    stale_after_s: float = opt(60.0, check=_range(1, 86400),
                               doc="sweeper: heartbeat and lease older than this = dead agent")
    sweep_interval_s: float = opt(10.0, check=_range(0.1, 3600))
    idle_timeout_s: float = opt(0.0, check=_range(0, 86400),
                                doc="0 = never; 300 = Tinytown's scale-to-zero")
    retry_backoff_s: float = opt(1.0, check=_range(0, 3600))
    retry_backoff_max_s: float = opt(300.0, check=_range(0, 86400))
    result_tail_bytes: int = opt(4000, check=_range(0, 1 << 20))
    max_blocking_connections: int = opt(0, check=_range(0, 100000),
                                        doc="0 = one per agent plus headroom")
    backlog_claim: bool = opt(True, doc="idle agents claim backlog tasks that fit their role/tags")


@dataclass(frozen=True)
class AgentCli:
    command: str = opt("", check=None)
    timeout_s: float | None = opt(3600.0, doc="per round; null = no limit")
    max_attempts: int = opt(3, check=_range(1, 1000))
    env: dict = opt(factory=dict)
    workdir: str | None = opt(None)


@dataclass(frozen=True)
class AgentSpec:
    name: str = opt("")
    role: str = opt("worker")
    cli: str = opt("")
    count: int = opt(1, check=_range(1, 100000))
    workdir: str | None = opt(None)
    env: dict = opt(factory=dict)
    tags: list = opt(factory=list, doc="backlog tags this agent claims (besides its role)")


@dataclass(frozen=True)
class MissionsSection:
    enabled: bool = opt(True, live=False)
    lease_ttl_s: float = opt(90.0, check=_range(3, 3600))
    sweep_interval_s: float = opt(30.0, check=_range(0.1, 3600),
                                  doc="safety sweep; task completions wake missions at once")
    gh: str = opt("gh")
    gh_timeout_s: float = opt(30.0, check=_range(1, 600))
    conductor_help_backoff_s: float = opt(900.0, check=_range(1, 86400))


@dataclass(frozen=True)
class Config:
    town: TownSection = opt(factory=TownSection)
    redis: RedisSection = opt(factory=RedisSection)
    control: ControlSection = opt(factory=ControlSection)
    logging: LoggingSection = opt(factory=LoggingSection)
    daemon: DaemonSection = opt(factory=DaemonSection)
    runtime: RuntimeSection = opt(factory=RuntimeSection)
    agent_clis: dict = opt(factory=dict, doc="NAME → AgentCli; merged over BUILTIN_CLIS")
    agents: list = opt(factory=list, doc="list of AgentSpec")
    adopt: bool = opt(False, doc="also run agents tt registered that nobody runs")
    missions: MissionsSection = opt(factory=MissionsSection)
    # Not from the file: where it came from and what the environment overrode.
    path: str = field(default="<defaults>", compare=False)
    env_redis_url: bool = field(default=False, compare=False)

    # --- derived values -------------------------------------------------------------
    @functools.cached_property   # (a frozen config: computed once; agents ask every round)
    def root(self) -> Path:
        return Path(self.town.root)  # always absolute after load()

    def resolve(self, p: str | None) -> Path | None:
        """A path from the file: absolute as is, relative against the town root."""
        if p is None:
            return None
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else self.root / q

    @property
    def owned_redis(self) -> bool:
        return self.redis.url is None

    @property
    def redis_data_dir(self) -> Path:
        return self.resolve(self.redis.data_dir)

    @property
    def redis_socket_path(self) -> Path | None:
        return self.resolve(self.redis.socket) if self.redis.socket else None

    @property
    def control_socket_path(self) -> Path:
        return self.resolve(self.control.socket)

    @property
    def log_file_path(self) -> Path | None:
        return self.resolve(self.logging.file)

    @functools.cached_property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @functools.cached_property
    def logs_dir_str(self) -> str:
        return str(self.logs_dir)

    def redis_url(self, *, redacted: bool = False) -> str:
        """The URL clients use: external URL, or the owned child's socket / TCP address."""
        r = self.redis
        if r.url:
            return redact_url(r.url) if redacted else r.url
        pw = r.password
        if self.redis_socket_path:
            q = f"?password={'****' if redacted else pw}" if pw else ""
            return f"unix://{self.redis_socket_path}{q}"
        auth = f":{'****' if redacted else pw}@" if pw else ""
        scheme = "rediss" if r.tls.enabled else "redis"
        host = r.bind if r.bind not in ("0.0.0.0", "::", "*") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{auth}{host}:{r.port}"

    def clis(self) -> dict[str, AgentCli]:
        return {**BUILTIN_CLIS, **self.agent_clis}

    @property
    def blocking_connections(self) -> int:
        """Size of the blocking-pop pool: runtime.max_blocking_connections, else one per agent
        plus headroom (more when `adopt` may bring in agents tt registered)."""
        n = self.runtime.max_blocking_connections
        if n:
            return n
        return len(self.expanded_agents()) + BLOCK_HEADROOM + (32 if self.adopt else 0)

    def expanded_agents(self) -> list[AgentSpec]:
        """`count: N` turns NAME into NAME-1 … NAME-N."""
        out = []
        for spec in self.agents:
            if spec.count == 1:
                out.append(spec)
            else:
                out.extend(dataclasses.replace(spec, name=f"{spec.name}-{i}", count=1)
                           for i in range(1, spec.count + 1))
        return out


BUILTIN_CLIS: dict[str, AgentCli] = {
    "claude": AgentCli(command="claude --print --dangerously-skip-permissions"),
    "codex": AgentCli(command="codex exec --dangerously-bypass-approvals-and-sandbox"),
    "auggie": AgentCli(command="auggie --print"),
    "aider": AgentCli(command="aider --yes --no-auto-commits --message"),
    "gemini": AgentCli(command="gemini"),
    "copilot": AgentCli(command="gh copilot"),
    "cursor": AgentCli(command="cursor"),
}

_SECTION_OF_DICT = {"agent_clis": AgentCli}
_SECTION_OF_LIST = {"agents": AgentSpec}


# ----------------------------------------------------------------------------- loading
def discover(path: str | None) -> str:
    """-c, else $TINYTOWND_CONFIG, else /etc/tinytownd/tinytownd.yaml."""
    return path or os.environ.get(ENV_CONFIG) or DEFAULT_PATH


def _type_name(t: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a mapping", list: "a list"}.get(t, str(t))


def _coerce(value: Any, hint: str, key: str) -> Any:
    """Check a scalar against the dataclass annotation (given as a string)."""
    optional = "None" in hint
    if value is None:
        if optional:
            return None
        raise _Invalid("must not be null")
    base = hint.replace(" | None", "").replace("None | ", "").strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, not {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if key in ("maxmemory",):  # sizes accept strings; the check converts
                return value
            raise _Invalid(f"must be an integer, not {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number, not {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, not {value!r}")
        return value
    if base == "dict":
        if not isinstance(value, dict):
            raise _Invalid(f"must be a mapping, not {type(value).__name__}")
        return value
    if base == "list":
        if not isinstance(value, list):
            raise _Invalid(f"must be a list, not {type(value).__name__}")
        return value
    return value


def _build(cls, data: Any, prefix: str, problems: list[tuple[str, str]]):
    """Build dataclass `cls` from a YAML mapping, collecting problems instead of raising."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append((prefix.rstrip("."), f"must be a mapping, not {type(data).__name__}"))
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("path", "env_redis_url")}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else \
                f" (known: {', '.join(sorted(fields))})"
            problems.append((key, f"unknown key{hint}"))
            continue
        f = fields[k]
        hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        try:
            sub = next((c for c in (TownSection, RedisSection, TlsSection, ControlSection,
                                    LoggingSection, DaemonSection, RuntimeSection,
                                    MissionsSection) if c.__name__ == hint), None)
            if sub is not None:
                kwargs[k] = _build(sub, v, f"{key}.", problems)
                continue
            if k in _SECTION_OF_DICT and cls is Config:
                kwargs[k] = _build_cli_map(v, key, problems)
                continue
            if k in _SECTION_OF_LIST and cls is Config:
                kwargs[k] = _build_agents(v, key, problems)
                continue
            v = _coerce(v, hint, k)
            check = f.metadata.get("check")
            if check is not None and v is not None:
                v = check(v)
            kwargs[k] = v
        except _Invalid as e:
            problems.append((key, e.msg))
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - schema bug
        problems.append((prefix.rstrip("."), str(e)))
        return cls()


def _build_cli_map(data, key, problems) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append((key, "must be a mapping of CLI name → {command: …}"))
        return {}
    out = {}
    for name, spec in data.items():
        k = f"{key}.{name}"
        if isinstance(spec, str):  # shorthand: name: "command"
            spec = {"command": spec}
        cli = _build(AgentCli, spec, f"{k}.", problems)
        if not cli.command.strip():
            problems.append((f"{k}.command", "is required and must not be empty"))
        if cli.timeout_s is not None and cli.timeout_s <= 0:
            problems.append((f"{k}.timeout_s", "must be > 0, or null for no limit"))
        for ek, ev in cli.env.items():
            if not isinstance(ev, (str, int, float)) or isinstance(ev, bool):
                problems.append((f"{k}.env.{ek}", "must be a string"))
        out[str(name)] = cli
    return out


def _build_agents(data, key, problems) -> list:
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append((key, "must be a list of {name, role, cli, count?, workdir?, env?}"))
        return []
    out = []
    for i, spec in enumerate(data):
        k = f"{key}[{i}]"
        a = _build(AgentSpec, spec, f"{k}.", problems)
        if not a.name:
            problems.append((f"{k}.name", "is required"))
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", a.name):
            problems.append((f"{k}.name", f"{a.name!r}: use letters, digits, '.', '_' or '-'"))
        elif a.name.strip().lower() in RESERVED_AGENT_NAMES:
            problems.append((f"{k}.name", f"{a.name!r} is reserved by Tinytown"))
        if not a.cli:
            problems.append((f"{k}.cli", "is required (a name from agent_clis)"))
        out.append(a)
    return out


def _validate_whole(cfg: Config, problems: list[tuple[str, str]]) -> None:
    """Checks that involve more than one key, or the file system."""
    clis = cfg.clis()
    names: dict[str, int] = {}
    for i, a in enumerate(cfg.agents):
        if a.cli and a.cli not in clis:
            close = difflib.get_close_matches(a.cli, clis, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append((f"agents[{i}].cli", f"unknown CLI {a.cli!r}{hint}; define it under "
                                                 "agent_clis"))
    for a in cfg.expanded_agents():
        if a.name in names:
            problems.append(("agents", f"agent name {a.name!r} is defined twice"))
        names[a.name] = 1
    r = cfg.redis
    if r.url is None:
        if r.socket is None and r.port == 0 and not r.tls.enabled:
            problems.append(("redis.port", "must be set (1-65535) when redis.socket is null"))
        if r.tls.enabled:
            if r.port == 0:
                problems.append(("redis.port", "must be set when redis.tls.enabled (the TLS port)"))
            for name in ("cert", "key"):
                val = getattr(r.tls, name)
                if not val:
                    problems.append((f"redis.tls.{name}", "is required when tls.enabled"))
                elif not cfg.resolve(val).is_file():
                    problems.append((f"redis.tls.{name}", f"file not found: {cfg.resolve(val)}"))
            if r.tls.ca_cert and not cfg.resolve(r.tls.ca_cert).is_file():
                problems.append(("redis.tls.ca_cert", f"file not found: {cfg.resolve(r.tls.ca_cert)}"))
        if (r.socket is None or r.port) and not _is_loopback(r.bind) and not r.password:
            problems.append(("redis.bind", f"{r.bind!r} is not a loopback address: set "
                                           "redis.password (or TINYTOWN_REDIS_PASSWORD)"))
        if shutil.which(r.server) is None and not Path(r.server).is_file():
            problems.append(("redis.server", f"{r.server!r} not found on PATH"))
        sock = cfg.redis_socket_path
        if sock and len(str(sock)) > UNIX_PATH_MAX:
            problems.append(("redis.socket", f"path is {len(str(sock))} bytes, over the "
                                             f"{UNIX_PATH_MAX}-byte unix socket limit: {sock}"))
    if len(str(cfg.control_socket_path)) > UNIX_PATH_MAX:
        problems.append(("control.socket", f"path over the {UNIX_PATH_MAX}-byte unix socket limit"))
    rt = cfg.runtime
    if rt.stale_after_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.stale_after_s", "must be at least twice "
                                                  "runtime.heartbeat_interval_s"))
    if rt.lease_ttl_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.lease_ttl_s", "must be at least twice "
                                                "runtime.heartbeat_interval_s"))


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_root(config_path: str) -> str:
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or \
        str(Path(config_path).resolve().parent)


def from_dict(data: Any, path: str = "<dict>", *, env: dict | None = None,
              check_files: bool = True) -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [("", "the top level must be a mapping")])
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(path, problems)
    # Resolve the town root (absolute) and apply environment overrides.
    root = cfg.town.root or _default_root(path)
    root_p = Path(os.path.expanduser(root))
    if not root_p.is_absolute():
        base = Path(path).resolve().parent if not path.startswith("<") else Path.cwd()
        root_p = base / root_p
    cfg = dataclasses.replace(cfg, town=dataclasses.replace(cfg.town, root=str(root_p)),
                              path=path)
    redis = cfg.redis
    env_url = (env.get("REDIS_URL") or "").strip()
    if env_url:
        try:
            _redis_url(env_url)
        except _Invalid as e:
            raise ConfigError(path, [("REDIS_URL", e.msg)])
        cfg = dataclasses.replace(cfg, redis=dataclasses.replace(RedisSection(), url=env_url),
                                  env_redis_url=True)
    elif env.get("TINYTOWN_REDIS_PASSWORD"):
        cfg = dataclasses.replace(cfg, redis=dataclasses.replace(
            redis, password=env["TINYTOWN_REDIS_PASSWORD"]))
    if check_files:
        _validate_whole(cfg, problems)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def load(path: str | None = None, *, env: dict | None = None, check_files: bool = True) -> Config:
    """Read and validate a config file. Raises ConfigError (exit 78 territory)."""
    path = discover(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")])
    except OSError as e:
        raise ConfigError(path, [("", f"cannot read: {e.strerror}")])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, [("", f"invalid YAML: {where}{problem}")])
    return from_dict(data, str(path), env=env, check_files=check_files)


# ----------------------------------------------------------------------------- diff
@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    live: bool

    def describe(self) -> str:
        def show(v):
            s = "****" if "password" in self.key and v else repr(v)
            return s if len(s) < 80 else s[:77] + "..."
        how = "applied" if self.live else "needs a restart"
        return f"{self.key}: {show(self.old)} -> {show(self.new)} ({how})"


def _flatten(obj: Any, prefix: str, out: dict[str, tuple[Any, bool]], live: bool) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name in ("path", "env_redis_url"):
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
