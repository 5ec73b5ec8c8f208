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

import yaml

from tinytownd.store.wire import RESERVED_AGENT_NAMES

from .agent_cli import PLACEHOLDERS, implied_prompt_mode
from .checks import (MAX_AGENT_CLIS, MAX_AGENTS_TOTAL, MAX_FILE_BYTES, MAX_STR, ConfigError,
                     Invalid, finite, is_loopback, name as check_name, redis_url_value, show, text)
from .schema import (_SECTION_OF_DICT, _SECTION_OF_LIST, DEFAULT_PATH, ENV_CONFIG, UNIX_PATH_MAX,
                     AgentCli, AgentSpec, Config, ControlSection, DaemonSection, LoggingSection,
                     MissionsSection, RedisSection, RuntimeSection, TlsSection, TownSection,
                     WorkspaceSection)

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
    problems += workspace_problems(cfg)
    rt = cfg.runtime
    if rt.stale_after_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.stale_after_s", "must be at least twice "
                                                  "runtime.heartbeat_interval_s"))
    if rt.lease_ttl_s < 2 * rt.heartbeat_interval_s:
        problems.append(("runtime.lease_ttl_s", "must be at least twice "
                                                "runtime.heartbeat_interval_s"))


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
    if env_url:
        try:
            redis_url_value(env_url)
        except Invalid as e:
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
    return from_dict(read_yaml(path), str(path), env=env, check_files=check_files)


def read_yaml(path: str) -> Any:
    """The YAML document in `path`: at most MAX_FILE_BYTES, UTF-8, no duplicate keys. Every
    problem is a ConfigError (never a traceback)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [("", "is a directory, not a config file")]) from None
    except OSError as e:
        raise ConfigError(path, [("", f"cannot read: {e.strerror or e}")]) from None
    except ValueError as e:   # e.g. a NUL in the path
        raise ConfigError(path, [("", f"cannot read: {e}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(path, [("", f"larger than {MAX_FILE_BYTES} bytes (1 MiB): not a "
                                      "config file?")])
    try:
        text_ = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(path, [("", f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line} "
                                      f"(offset {e.start})")]) from None
    return parse_yaml(text_, path)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"


def parse_yaml(text_: str, path: str = "<string>") -> Any:
    """yaml.safe_load, but a key given twice in one mapping (at any depth) is an error naming the
    key and both lines. Merge keys (`<<: *base`) may be overridden, as YAML intends."""
    loader = _Loader(text_)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dup = _first_duplicate(node, loader)
        if dup is not None:
            key, first, again = dup
            raise ConfigError(path, [(key, f"duplicate key (line {first}, again at line {again})")])
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(path, [("", f"invalid YAML: {_yaml_problem(e)}")]) from None
    except RecursionError:
        raise ConfigError(path, [("", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return where + " ".join(str(problem).split())


def _key_text(node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return f"<{node.id}>"


def _scalar_key(knode, loader) -> Any:
    if not isinstance(knode, yaml.ScalarNode):
        return None
    try:
        key = loader.construct_object(knode)
        hash(key)
        return ("v", key)
    except Exception:
        return ("t", knode.tag, knode.value)


def _first_duplicate(root, loader) -> tuple[str, int, int] | None:
    """(dotted key, first line, second line) of the first key given twice, or None. Iterative,
    and each node is visited once (aliases share nodes)."""
    seen_nodes: set[int] = set()
    stack = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for knode, vnode in node.value:
                if knode.tag == _MERGE:
                    stack.append((vnode, prefix))
                    continue
                name = _key_text(knode)
                # the key as YAML constructs it: 1 and 0x1 (or 1 and true) would land on the
                # same dict entry, so they are duplicates too
                ident = _scalar_key(knode, loader)
                line = knode.start_mark.line + 1
                sub = f"{prefix}.{name}" if prefix else name
                if ident is not None and ident in keys:
                    return sub, keys[ident], line
                if ident is not None:
                    keys[ident] = line
                stack.append((vnode, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{prefix}[{i}]"))
    return None
