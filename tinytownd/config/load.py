"""Loading a config: YAML → the schema, collecting every problem as `FILE: KEY: problem`, then
the checks that involve more than one key or the file system, then environment overrides."""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
from pathlib import Path
from typing import Any


from tinytownd.store.wire import RESERVED_AGENT_NAMES

from .agent_cli import PLACEHOLDERS, implied_prompt_mode
from .yaml_file import read_yaml
from .checks import (MAX_AGENT_CLIS, MAX_AGENTS_TOTAL, MAX_STR, ConfigError,
                     Invalid, finite, http_token, is_loopback, name as check_name, parse_listen,
                     redis_url_value, show, text)
from .schema import (_SECTION_OF_DICT, _SECTION_OF_LIST, DEFAULT_PATH, ENV_CONFIG, UNIX_PATH_MAX,
                     AgentCli, AgentSpec, Config, ControlSection, DaemonSection, HttpSection,
                     LoggingSection, MissionsSection, RedisSection, RuntimeSection, SentinelSection,
                     TlsSection,
                     TownSection, WorkspaceSection)

def discover(path: str | None) -> str:
    """-c, else $TINYTOWND_CONFIG, else /etc/tinytownd/tinytownd.yaml."""
    return path or os.environ.get(ENV_CONFIG) or DEFAULT_PATH


def _coerce(value: Any, hint: str, key: str, max_len: int = MAX_STR) -> Any:
    """Check a scalar against the dataclass annotation (given as a string)."""
    optional = "None" in hint
    if value is None:
        if optional:
            return None
        raise Invalid("must not be null")
    base = hint.replace(" | None", "").replace("None | ", "").strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false, not {show(value)}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if key in ("maxmemory",) and isinstance(value, str):   # sizes: the check converts
                return text(value, 64)
            raise Invalid(f"must be an integer, not {show(value)}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number, not {show(value)}")
        try:
            return finite(float(value))
        except OverflowError:   # an int too large for a float
            raise Invalid(f"{show(value)} is out of range") from None
    if base == "str":
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {show(value)}")
        return text(value, max_len)
    if base == "dict":
        if not isinstance(value, dict):
            raise Invalid(f"must be a mapping, not {type(value).__name__}")
        return value
    if base == "list":
        if not isinstance(value, list):
            raise Invalid(f"must be a list, not {type(value).__name__}")
        return value
    return value


_FILE_FIELDS = {}


def _file_fields(cls) -> dict:
    """The fields of `cls` that come from the file (not path, env_redis_url, ...)."""
    got = _FILE_FIELDS.get(cls)
    if got is None:
        got = _FILE_FIELDS[cls] = {f.name: f for f in dataclasses.fields(cls) if f.compare}
    return got


def _build(cls, data: Any, prefix: str, problems: list[tuple[str, str]]):
    """Build dataclass `cls` from a YAML mapping, collecting problems instead of raising."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append((prefix.rstrip("."), f"must be a mapping, not {type(data).__name__}"))
        return cls()
    fields = _file_fields(cls)
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            close = difflib.get_close_matches(str(k)[:100], fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else \
                f" (known: {', '.join(sorted(fields))})"
            problems.append((key, f"unknown key{hint}"))
            continue
        f = fields[k]
        hint = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        try:
            sub = next((c for c in (TownSection, RedisSection, TlsSection, SentinelSection,
                                    ControlSection,
                                    LoggingSection, DaemonSection, RuntimeSection,
                                    MissionsSection, HttpSection) if c.__name__ == hint), None)
            if sub is not None:
                kwargs[k] = _build(sub, v, f"{key}.", problems)
                continue
            if k in _SECTION_OF_DICT and cls is Config:
                kwargs[k] = _build_cli_map(v, key, problems)
                continue
            if k in _SECTION_OF_LIST and cls is Config:
                kwargs[k] = _build_agents(v, key, problems)
                continue
            if k == "workspace" and cls in (AgentCli, AgentSpec):
                kwargs[k] = _build_workspace(v, key, problems)
                continue
            v = _coerce(v, hint, k, f.metadata.get("max_len", MAX_STR))
            check = f.metadata.get("check")
            if check is not None and v is not None:
                v = check(v)
            kwargs[k] = v
        except Invalid as e:
            sub = e.sub or ""
            problems.append((f"{key}{'' if sub.startswith('[') or not sub else '.'}{sub}",
                             e.msg))
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - schema bug
        problems.append((prefix.rstrip("."), str(e)))
        return cls()


def _build_workspace(data, key, problems) -> dict:
    """The `workspace:` keys given, each checked as WorkspaceSection's field."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append((key, f"must be a mapping of {', '.join(_file_fields(WorkspaceSection))}"
                              f", not {type(data).__name__}"))
        return {}
    sec = _build(WorkspaceSection, data, f"{key}.", problems)
    return {k: getattr(sec, k) for k in data if k in _file_fields(WorkspaceSection)}


def _build_cli_map(data, key, problems) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append((key, "must be a mapping of CLI name → {command: …}"))
        return {}
    if len(data) > MAX_AGENT_CLIS:
        problems.append((key, f"{len(data)} entries, over the maximum {MAX_AGENT_CLIS}"))
        return {}
    out = {}
    for name, spec in data.items():
        k = f"{key}.{name}"
        try:
            check_name(name, "a CLI name")
        except Invalid as e:
            problems.append((k, e.msg))
            continue
        if isinstance(spec, str):  # shorthand: name: "command"
            spec = {"command": spec}
        cli = _build(AgentCli, spec, f"{k}.", problems)
        if not cli.command.strip():
            problems.append((f"{k}.command", "is required and must not be empty"))
        cli = _prompt_mode(cli, spec, k, problems)
        if cli.cooldown_max_s < cli.cooldown_s:
            problems.append((f"{k}.cooldown_max_s", f"{cli.cooldown_max_s:g} is below cooldown_s "
                                                    f"{cli.cooldown_s:g}"))
        out[str(name)] = cli
    return out


def _prompt_mode(cli: AgentCli, spec, key: str, problems) -> AgentCli:
    """A placeholder in the command implies the prompt mode; a `prompt:` that says otherwise
    is a problem."""
    try:
        implied = implied_prompt_mode(cli.command)
    except ValueError as e:
        problems.append((f"{key}.command", str(e)))
        return cli
    if implied is None or implied == cli.prompt:
        return cli
    if isinstance(spec, dict) and "prompt" in spec:
        ph = next(p for p, m in PLACEHOLDERS.items() if m == implied)
        problems.append((f"{key}.prompt", f"{cli.prompt!r}, but the command's {ph} means "
                                          f"prompt: {implied}"))
        return cli
    return dataclasses.replace(cli, prompt=implied)


def _build_agents(data, key, problems) -> list:
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append((key, "must be a list of {name, role, cli, count?, workdir?, env?}"))
        return []
    if len(data) > MAX_AGENTS_TOTAL:
        problems.append((key, f"{len(data)} entries, over the maximum of {MAX_AGENTS_TOTAL} "
                              "agents in all"))
        return []
    out = []
    for i, spec in enumerate(data):
        k = f"{key}[{i}]"
        a = _build(AgentSpec, spec, f"{k}.", problems)
        if not a.name:
            problems.append((f"{k}.name", "is required"))
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", a.name):
            problems.append((f"{k}.name", f"{show(a.name)}: use 1-64 letters, digits, '.', '_' "
                                          "or '-'"))
        elif a.name.strip().lower() in RESERVED_AGENT_NAMES:
            problems.append((f"{k}.name", f"{a.name!r} is reserved by Tinytown"))
        if not a.cli:
            problems.append((f"{k}.cli", "is required (a name from agent_clis)"))
        out.append(a)
    total = sum(a.count for a in out)
    if total > MAX_AGENTS_TOTAL:
        problems.append((key, f"{total} agents in all (counts expanded), over the maximum "
                              f"{MAX_AGENTS_TOTAL}"))
    return out


def _under(p: Path, root: Path) -> bool:
    p, root = Path(os.path.normpath(p)), Path(os.path.normpath(root))
    return p == root or root in p.parents


def _validate_redis_choice(cfg: Config, problems: list[tuple[str, str]]) -> None:
    """redis.url or redis.sentinel (not both); a sentinel section complete; WAIT needs
    replicas, which an owned redis-server does not have."""
    r = cfg.redis
    s = r.sentinel
    if s.master is not None and r.url is not None:
        problems.append(("redis.sentinel", "redis.url and redis.sentinel are alternatives: set "
                                           "one of them, not both"))
    elif s.master is not None and not s.nodes:
        problems.append(("redis.sentinel.nodes", "is required (1-16 \"host:port\") when "
                                                 "redis.sentinel.master is set"))
    elif s.master is None and (s.nodes or s.password or s.tls):
        problems.append(("redis.sentinel.master", "is required when other redis.sentinel keys "
                                                  "are set"))
    if r.wait_replicas and r.url is None and s.master is None:
        problems.append(("redis.wait_replicas", "needs replicas: an external Redis (redis.url) "
                                                "or redis.sentinel"))


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
    if cfg.owned_redis:
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
        if (r.socket is None or r.port) and not is_loopback(r.bind) and not r.password:
            problems.append(("redis.bind", f"{r.bind!r} is not a loopback address: set "
                                           "redis.password (or TINYTOWN_REDIS_PASSWORD)"))
        if shutil.which(r.server) is None and not Path(r.server).is_file():
            problems.append(("redis.server", f"{r.server!r} not found on PATH"))
        sock = cfg.redis_socket_path
        if sock and len(str(sock)) > UNIX_PATH_MAX:
            problems.append(("redis.socket", f"path is {len(str(sock))} bytes, over the "
                                             f"{UNIX_PATH_MAX}-byte unix socket limit: {sock}"))
    log = cfg.log_file_path
    if log is not None:
        if log.is_dir():
            problems.append(("logging.file", f"{log} is a directory"))
        elif not log.parent.is_dir():
            if log.parent.exists():
                problems.append(("logging.file", f"{log.parent} is not a directory"))
            elif not _under(log.parent, cfg.root):   # under the root, the daemon creates it
                problems.append(("logging.file", f"directory {log.parent} does not exist"))
    if len(str(cfg.control_socket_path)) > UNIX_PATH_MAX:
        problems.append(("control.socket", f"path over the {UNIX_PATH_MAX}-byte unix socket limit"))
    problems += http_problems(cfg)
    problems += workspace_problems(cfg)
    rt = cfg.runtime
    if rt.stale_after_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.stale_after_s", "must be at least twice "
                                                  "runtime.heartbeat_interval_s"))
    if rt.lease_ttl_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.lease_ttl_s", "must be at least twice "
                                                "runtime.heartbeat_interval_s"))


TOKEN_FILE_MAX = 65536
ENV_HTTP_LISTEN = "TINYTOWND_HTTP_LISTEN"   # http.listen when the file does not set it ("off": none)


def read_token_file(path: Path) -> str:
    """The token in `path`: its first line, stripped. Raises Invalid."""
    try:
        with open(path, "rb") as f:
            raw = f.read(TOKEN_FILE_MAX + 1)
    except OSError as e:
        raise Invalid(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > TOKEN_FILE_MAX:
        raise Invalid(f"{path} is larger than {TOKEN_FILE_MAX} bytes: not a token file?")
    lines = raw.decode("utf-8", "replace").splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise Invalid(f"{path} is empty (the first line is the token)")
    try:
        return http_token(token)
    except Invalid as e:
        raise Invalid(f"the token in {path} {e.msg}") from None


def http_problems(cfg: Config, *, check_files: bool = True) -> list[tuple[str, str]]:
    """The `http:` rules that involve more than one key: one of token/token_file, a readable
    token file, and no listener on a non-loopback address without a token (as townhall)."""
    h, out = cfg.http, []
    if h.token and h.token_file:
        out.append(("http.token_file", "set either http.token or http.token_file, not both"))
    elif h.token_file and check_files:
        try:
            read_token_file(cfg.http_token_path)
        except Invalid as e:
            out.append(("http.token_file", e.msg))
    if h.listen is not None and not (h.token or h.token_file):
        host, _port = parse_listen(h.listen)
        if not is_loopback(host):
            out.append(("http.listen", f"{h.listen!r} is not a loopback address: set http.token "
                                       "or http.token_file (or listen on 127.0.0.1)"))
    return out


def workspace_problems(cfg: Config) -> list[tuple[str, str]]:
    """Every agent in worktree mode needs a git repository the daemon can write to."""
    clis, out, seen = cfg.clis(), [], {}
    for i, a in enumerate(cfg.agents):
        cli = clis.get(a.cli)
        ws = {**(cli.workspace if cli else {}), **a.workspace}
        if ws.get("mode") != "worktree":
            continue
        if "repo" in a.workspace or not (cli and "repo" in cli.workspace):
            key, what = f"agents[{i}].workspace.repo", ""
        else:
            key, what = f"agent_clis.{a.cli}.workspace.repo", ""
        if not ws.get("repo"):
            what = "the agent's workdir: "
        repo = str(cfg.resolve(ws.get("repo")) or cfg.resolve(a.workdir or (cli and cli.workdir))
                   or cfg.root)
        if repo not in seen:
            from tinytownd.workspaces.git import not_a_repo_problem   # runs git (a timeout)
            seen[repo] = not_a_repo_problem(repo)
        if seen[repo]:
            out.append((key, what + seen[repo]))
    return out


def _default_root(config_path: str) -> str:
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or \
        str(Path(config_path).resolve().parent)


def from_dict(data: Any, path: str = "<dict>", *, env: dict | None = None,
              check_files: bool = True) -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    empty = data is None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [("", "the top level must be a mapping")])
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(path, problems)
    cfg = dataclasses.replace(cfg, source_empty=empty,
                              agents_listed=isinstance(data.get("agents"), list))
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
    # with Sentinels the file wins: a REDIS_URL is the primary of the moment (what the daemon
    # exports to its agents for tt), which a failover makes stale
    if env_url and redis.sentinel.master is None:
        try:
            redis_url_value(env_url)
        except Invalid as e:
            raise ConfigError(path, [("REDIS_URL", e.msg)])
        cfg = dataclasses.replace(cfg, redis=dataclasses.replace(RedisSection(), url=env_url),
                                  env_redis_url=True)
    elif env.get("TINYTOWN_REDIS_PASSWORD"):
        cfg = dataclasses.replace(cfg, redis=dataclasses.replace(
            redis, password=env["TINYTOWN_REDIS_PASSWORD"]))
    http = data.get("http")
    env_listen = env.get(ENV_HTTP_LISTEN)
    if env_listen is not None and not (isinstance(http, dict) and "listen" in http):
        listen = None if env_listen.strip().lower() in ("", "off", "null", "none") \
            else env_listen.strip()
        try:
            if listen is not None:
                parse_listen(listen)
        except Invalid as e:
            raise ConfigError(path, [(ENV_HTTP_LISTEN, e.msg)])
        cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, listen=listen))
    _validate_redis_choice(cfg, problems)
    if check_files:
        _validate_whole(cfg, problems)
    else:
        problems += http_problems(cfg, check_files=False)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def load(path: str | None = None, *, env: dict | None = None, check_files: bool = True) -> Config:
    """Read and validate a config file. Raises ConfigError (exit 78 territory)."""
    path = discover(path)
    return from_dict(read_yaml(path), str(path), env=env, check_files=check_files)
