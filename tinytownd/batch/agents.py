"""The agents of an embedded batch: their config sections, the checks, the daemon config.

`agent_sections` turns the file's `agent_clis`/`agents` and `--agents`/`--cli` into the two config
sections; `check_agents` validates them through the daemon's config schema and checks that every
task's role and tags fit some agent; `embedded_config` is the whole daemon config of an embedded
batch, with the batch directory as the town root.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tinytownd import config as cfgmod
from tinytownd.config.load import workspace_problems
from tinytownd.store import fit

from .file import BatchFile, BatchFileError, UsageError, did_you_mean

DEFAULT_AGENTS = 4
SOCKET_PATH_MAX = 100      # below the 107 bytes of a unix socket path, with room to spare


def _cli_for_option(value: str, known: dict) -> tuple[str, dict]:
    """--cli VALUE: a known CLI name, or a command (contains a space or is on PATH); returns the
    CLI name and the agent_clis entries to add."""
    if value in known:
        return value, {}
    if " " in value.strip() or shutil.which(value) or os.path.isfile(value):
        return "batch-cli", {"batch-cli": {"command": value}}
    raise UsageError(f"--cli {value!r}: unknown CLI{did_you_mean(value, sorted(known))}; "
                     "define it under agent_clis in the batch file, or give a command")


def agent_sections(bf: BatchFile, *, agents: int | None, cli: str | None) -> tuple[dict, list]:
    """The `agent_clis` and `agents` config sections for an embedded run.

    Without `agents:` in the file: N agents (`--agents`, default 4) named `agent-1..N`, role
    `worker`, running `--cli` (or the file's only agent_clis entry). With `agents:` in the file,
    `--cli` replaces every entry's CLI and `--agents` the count of a single entry. Agents work in
    the current directory unless their entry names a `workdir` (relative = to the current dir).
    Every agent gets TINYTOWND_BATCH_DIR = the batch file's directory, so a command can name
    scripts next to the file (`python3 "$TINYTOWND_BATCH_DIR/agents/x.py"`) from any cwd.
    """
    clis = dict(bf.agent_clis) if isinstance(bf.agent_clis, dict) else bf.agent_clis
    if not isinstance(clis, dict):
        raise BatchFileError(bf.path, "agent_clis", "must be a mapping of CLI name → {command: …}")
    clis, specs = _agent_sections(bf, clis, agents=agents, cli=cli)
    return clis, _with_workspace(bf, clis, specs)


def _with_workspace(bf: BatchFile, clis: dict, specs: list) -> list:
    """The file's `workspace:` keys go into every agent entry, below the keys its CLI and the
    entry itself give; a relative `repo` is relative to the current directory (as workdir)."""
    def absolute(ws):
        if isinstance(ws, dict) and isinstance(ws.get("repo"), str):
            return {**ws, "repo": os.path.abspath(os.path.expanduser(ws["repo"]))}
        return ws
    for name, c in list(clis.items()):
        if isinstance(c, dict) and "workspace" in c:
            clis[name] = {**c, "workspace": absolute(c["workspace"])}
    top = absolute(bf.workspace) or {}
    for s in specs:
        if not isinstance(s, dict):
            continue
        own = absolute(s.get("workspace"))
        c = clis.get(s.get("cli"))
        cli_ws = c.get("workspace") if isinstance(c, dict) else None
        cli_keys = set(cli_ws) if isinstance(cli_ws, dict) else set()
        if top or own is not None:
            base = {k: v for k, v in top.items() if k not in cli_keys}
            s["workspace"] = {**base, **own} if isinstance(own, dict) else (own or base)
    return specs


def _agent_sections(bf: BatchFile, clis: dict, *, agents: int | None,
                    cli: str | None) -> tuple[dict, list]:
    known = {**{k: None for k in cfgmod.BUILTIN_CLIS}, **clis}
    cli_name = None
    if cli:
        cli_name, extra = _cli_for_option(cli, known)
        clis.update(extra)
    if agents is not None and agents < 1:
        raise UsageError("--agents must be >= 1")
    file_dir = os.path.dirname(os.path.abspath(bf.path))
    specs = bf.agents
    if specs:
        if not isinstance(specs, list):
            raise BatchFileError(bf.path, "agents", "must be a list of {name, role, cli, count}")
        specs = [dict(s) if isinstance(s, dict) else s for s in specs]
        if cli_name:
            for s in specs:
                if isinstance(s, dict):
                    s["cli"] = cli_name
        if agents is not None:
            if len(specs) != 1:
                raise UsageError("--agents N needs a batch file with at most one agents: entry "
                                 f"({len(specs)} here); edit the counts in the file instead")
            specs[0]["count"] = agents
        for s in specs:
            if isinstance(s, dict):
                s["workdir"] = os.path.abspath(s.get("workdir") or ".")
                env = s.get("env") if isinstance(s.get("env"), dict) else {}
                s["env"] = {"TINYTOWND_BATCH_DIR": file_dir, **env}
        return clis, specs
    if not cli_name:
        if len(clis) == 1:
            cli_name = next(iter(clis))
        else:
            raise UsageError("no agents: pass --cli NAME (a CLI from agent_clis, a built-in like "
                             "claude, or a command), or define agents: in the batch file")
    return clis, [{"name": "agent", "role": "worker", "cli": cli_name,
                   "count": agents or DEFAULT_AGENTS, "workdir": os.path.abspath("."),
                   "env": {"TINYTOWND_BATCH_DIR": file_dir}}]


def check_agents(bf: BatchFile, clis: dict, agents: list, *, town_root: str = "/tmp") -> None:
    """Validate the agent sections through the daemon's config schema; every task's role must
    be served and its tags must fit some agent (store/fit.py)."""
    try:
        cfg = cfgmod.from_dict({"agent_clis": clis, "agents": agents,
                                "town": {"root": town_root}}, bf.path, env={},
                               check_files=False)
    except cfgmod.ConfigError as e:
        key, msg = e.problems[0]
        raise BatchFileError(bf.path, key, msg) from None
    problems = workspace_problems(cfg)     # worktree mode: a git repository we can write to
    if problems:
        raise BatchFileError(bf.path, *problems[0])
    known = cfg.clis()
    for i, a in enumerate(cfg.agents):
        if a.cli not in known:
            raise BatchFileError(bf.path, f"agents[{i}].cli",
                                 f"unknown CLI {a.cli!r}{did_you_mean(a.cli, sorted(known))}")
    expanded = cfg.expanded_agents()
    names = set()
    for a in expanded:
        if a.name in names:
            raise BatchFileError(bf.path, "agents", f"agent name {a.name!r} is defined twice")
        names.add(a.name)
    roles = {a.role for a in expanded}
    words = [fit.agent_words(a.role, a.name, a.tags) for a in expanded]
    for t in bf.tasks:
        if t.role and t.role not in roles:
            raise BatchFileError(bf.path, t.entry(), f"role {t.role!r} has no agent "
                                                     f"(agents have: {', '.join(sorted(roles))})")
        if t.tags and not t.role and not any(fit.task_fits(t.tags, w) for w in words):
            raise BatchFileError(bf.path, t.entry(),
                                 f"tags {list(t.tags)} fit no agent (an agent takes a tagged task "
                                 "when one tag is its role, its name or one of its tags)")


def roster(cfg) -> list[tuple[str, frozenset]]:
    """(name, fit words) of every agent of a config, for the batch dispatcher."""
    return [(a.name, fit.agent_words(a.role, a.name, a.tags)) for a in cfg.expanded_agents()]


def _socket_path(root: Path, name: str) -> str:
    """`root/name`, or a short /tmp path when that would exceed the unix socket limit."""
    p = root / name
    if len(str(p)) <= SOCKET_PATH_MAX:
        return str(p)
    h = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    short = Path("/tmp") / f"ttbatch-{h}"
    short.mkdir(mode=0o700, exist_ok=True)
    return str(short / name)


def embedded_config(bf: BatchFile, root: Path, clis: dict, agents: list, *,
                    appendfsync: str | None = None, log_level: str = "info"):
    """The daemon config of an embedded batch: town root = the batch dir, everything under it."""
    fsync = appendfsync or "everysec"
    data = {
        "town": {"name": "batch", "root": str(root)},
        "redis": {"socket": _socket_path(root, "redis.sock"),
                  "appendonly": fsync not in ("off",), "save": "",
                  "appendfsync": fsync if fsync in ("always", "everysec", "no") else "everysec"},
        "control": {"socket": _socket_path(root, "tinytownd.sock")},
        "logging": {"level": log_level, "file": "logs/tinytownd.log"},
        "daemon": {"drain_timeout_s": 30.0},
        # A task batch hands its tasks to the agents itself (batch/dispatch.py); a mission
        # assigns through the mission engine. Either way nothing else claims from this town's
        # backlog.
        "runtime": {"backlog_claim": bf.kind != "tasks"},
        # A task batch has no missions, so no mission engine needs to read the tags of every
        # finished task from the notify channel.
        "missions": {"enabled": bf.kind != "tasks"},
        "agent_clis": clis,
        "agents": agents,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    try:
        return cfgmod.from_dict(data, str(root / "batch-config"), env=env)
    except cfgmod.ConfigError as e:
        key, msg = e.problems[0]
        raise BatchFileError(bf.path, key, msg) from None


def uses_workspaces(cfg) -> bool:
    """Whether any agent of `cfg` runs its rounds in worktrees (runtime/settings.py's rule):
    only then do its tasks need the batch link in their meta (batch/tasks.py link_meta)."""
    clis = cfg.clis()
    return any(a.workspace or getattr(clis.get(a.cli), "workspace", None)
               for a in cfg.expanded_agents())
