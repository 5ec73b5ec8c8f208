"""Headless batch runs: `tinytownd batch FILE`.

A batch file (YAML) is either a task list or a mission (the missions file format):

    tasks:                       # required unless the file is a mission
      - id: t1                   # optional (default: the 1-based position); unique; str or int
        description: "..."       # required, non-empty
        role: worker             # optional: only agents with this role take it
        tags: [a, b]             # optional: list of strings
        timeout_s: 60            # optional: per-attempt timeout (> 0)
        max_attempts: 2          # optional: attempts before `failed` (>= 1)
    defaults: {role, tags, timeout_s, max_attempts}   # optional, applied to every task
    agent_clis: {NAME: {command: ..., timeout_s, max_attempts, env}}   # as in the daemon config
    agents: [{name, role, cli, count}]                                 # as in the daemon config

Two ways to run (see `run_batch`):
  * embedded (default): a Daemon with its own redis-server under the batch directory
    (`--dir`, default `.tinytownd/batches/<ID>`), the agents and the dispatcher in this process;
  * submit (`-c CONFIG`): the tasks go to the town of a running daemon, whose agents run them;
    this process only submits and follows progress.

Submission is idempotent: `batch:<bid>:ids` maps every file id to its task uuid, written in the same
MULTI/EXEC as the task hash and the backlog entry, so a resume (`--resume ID`) after a crash submits
exactly the tasks that are missing and never a completed one twice. Completion is event-driven
(SUBSCRIBE keys.notify) with a periodic re-count of the unfinished tasks, so it never hangs on a
lost notification.

Exit codes: 0 all completed, 1 some failed, 2 usage or invalid file, 69 Redis unavailable,
75 interrupted (Ctrl-C / SIGTERM: drained, resumable with --resume ID).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 75

TASK_KEYS = ("id", "description", "role", "tags", "timeout_s", "max_attempts")
DEFAULT_KEYS = ("role", "tags", "timeout_s", "max_attempts")
TOP_KEYS_TASKS = ("tasks", "defaults", "agent_clis", "agents", "name")
MISSION_KEYS = ("objective", "policy", "work_items", "title")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
BATCH_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_AGENTS = 4


class BatchFileError(Exception):
    """An invalid batch file or usage; `str()` names the file and the offending entry."""

    def __init__(self, file: str, entry: str, problem: str):
        self.file, self.entry, self.problem = file, entry, problem
        super().__init__(f"{file}: {entry}: {problem}" if entry else f"{file}: {problem}")


class UsageError(Exception):
    """A bad combination of options (exit 2)."""


@dataclass(frozen=True)
class TaskSpec:
    id: str
    description: str
    role: str | None = None
    tags: tuple = ()
    timeout_s: float | None = None
    max_attempts: int | None = None
    index: int = 0

    def entry(self) -> str:
        return f"tasks[{self.index}] (id {self.id!r})"


@dataclass
class BatchFile:
    path: str
    kind: str                           # "tasks" | "mission"
    tasks: list[TaskSpec] = field(default_factory=list)
    agent_clis: dict = field(default_factory=dict)   # raw YAML (validated by config.from_dict)
    agents: list = field(default_factory=list)       # raw YAML
    mission: dict | None = None                      # the raw mission document
    digest: str = ""
    name: str | None = None

    def by_id(self) -> dict[str, TaskSpec]:
        return {t.id: t for t in self.tasks}


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


def _number(v: Any, what: str, *, integer: bool = False, minimum: float = 0,
            exclusive: bool = True) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ValueError(f"{what} must be {'an integer' if integer else 'a number'}, not {v!r}")
    if (v <= minimum) if exclusive else (v < minimum):
        raise ValueError(f"{what} must be {'>' if exclusive else '>='} {minimum}, not {v!r}")
    return v


def _tags(v: Any, what: str = "tags") -> tuple:
    if isinstance(v, str):
        v = [t.strip() for t in v.split(",") if t.strip()]
    if not isinstance(v, list) or not all(isinstance(t, str) and t.strip() for t in v):
        raise ValueError(f"{what} must be a list of non-empty strings, not {v!r}")
    return tuple(t.strip() for t in v)


def _role(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"role must be a non-empty string, not {v!r}")
    return v.strip()


def _fields(spec: dict, entry_keys, path: str, entry: str) -> dict:
    """Check the optional fields shared by tasks and defaults; return the parsed values."""
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if k not in entry_keys:
            raise BatchFileError(path, entry, f"unknown key {k!r}{_did_you_mean(k, entry_keys)}")
        try:
            if k == "role" and v is not None:
                out["role"] = _role(v)
            elif k == "tags" and v is not None:
                out["tags"] = _tags(v)
            elif k == "timeout_s" and v is not None:
                out["timeout_s"] = float(_number(v, "timeout_s"))
            elif k == "max_attempts" and v is not None:
                out["max_attempts"] = int(_number(v, "max_attempts", integer=True, minimum=1,
                                                  exclusive=False))
        except ValueError as e:
            raise BatchFileError(path, entry, str(e)) from None
    return out


def parse(data: Any, path: str = "<batch>") -> BatchFile:
    """Validate a parsed YAML document. Raises BatchFileError naming the first offending entry."""
    if not isinstance(data, dict):
        raise BatchFileError(path, "", "the top level must be a mapping with `tasks:` "
                                       "(or a mission with `work_items:`)")
    text = json.dumps(data, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if "work_items" in data or "objective" in data:
        if "tasks" in data:
            raise BatchFileError(path, "tasks", "a file is either a task list or a mission "
                                                "(work_items), not both")
        allowed = MISSION_KEYS + ("agent_clis", "agents")
        for k in data:
            if k not in allowed:
                raise BatchFileError(path, str(k), f"unknown key{_did_you_mean(k, allowed)}")
        mission = {k: v for k, v in data.items() if k in MISSION_KEYS}
        return BatchFile(path=path, kind="mission", mission=mission,
                         agent_clis=data.get("agent_clis") or {},
                         agents=data.get("agents") or [], digest=digest)
    for k in data:
        if k not in TOP_KEYS_TASKS:
            raise BatchFileError(path, str(k), f"unknown key{_did_you_mean(k, TOP_KEYS_TASKS)}")
    if "tasks" not in data:
        raise BatchFileError(path, "tasks", "is required (a list of {id, description, ...}), "
                                            "or give a mission with work_items")
    tasks_raw = data["tasks"]
    if not isinstance(tasks_raw, list):
        raise BatchFileError(path, "tasks", f"must be a list, not {type(tasks_raw).__name__}")
    if not tasks_raw:
        raise BatchFileError(path, "tasks", "is empty: nothing to run")
    defaults_raw = data.get("defaults") or {}
    if not isinstance(defaults_raw, dict):
        raise BatchFileError(path, "defaults", "must be a mapping of role/tags/timeout_s/max_attempts")
    defaults = _fields(defaults_raw, DEFAULT_KEYS, path, "defaults")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise BatchFileError(path, "name", "must be a string")
    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(tasks_raw):
        entry = f"tasks[{i}]"
        if isinstance(spec, str):  # shorthand: - "description"
            spec = {"description": spec}
        if not isinstance(spec, dict):
            raise BatchFileError(path, entry, f"must be a mapping with id and description, not "
                                              f"{type(spec).__name__}")
        tid = spec.get("id", i + 1)
        if isinstance(tid, bool) or not isinstance(tid, (str, int)):
            raise BatchFileError(path, entry, f"id must be a string or an integer, not {tid!r}")
        tid = str(tid).strip()
        if not ID_RE.fullmatch(tid):
            raise BatchFileError(path, entry, f"id {tid!r}: use 1-128 letters, digits, '.', '_', "
                                              "':', '/' or '-'")
        entry = f"tasks[{i}] (id {tid!r})"
        if tid in seen:
            raise BatchFileError(path, entry, f"duplicate id {tid!r} (also tasks[{seen[tid]}])")
        seen[tid] = i
        desc = spec.get("description")
        if desc is None or (isinstance(desc, str) and not desc.strip()):
            raise BatchFileError(path, entry, "description is required and must not be empty")
        if not isinstance(desc, str):
            raise BatchFileError(path, entry, f"description must be a string, not "
                                              f"{type(desc).__name__}")
        vals = {**defaults, **_fields({k: v for k, v in spec.items()
                                       if k not in ("id", "description")},
                                      TASK_KEYS, path, entry)}
        tasks.append(TaskSpec(id=tid, description=desc, role=vals.get("role"),
                              tags=vals.get("tags", ()), timeout_s=vals.get("timeout_s"),
                              max_attempts=vals.get("max_attempts"), index=i))
    return BatchFile(path=path, kind="tasks", tasks=tasks,
                     agent_clis=data.get("agent_clis") or {}, agents=data.get("agents") or [],
                     digest=digest, name=name)


def load(path: str) -> BatchFile:
    """Read and validate a batch file (BatchFileError on any problem, including I/O and YAML)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise BatchFileError(path, "", "file not found") from None
    except OSError as e:
        raise BatchFileError(path, "", f"cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise BatchFileError(path, "", f"invalid YAML: {where}"
                                       f"{getattr(e, 'problem', None) or e}") from None
    return parse(data, path)


# ----------------------------------------------------------------------------- agents / config
def _cli_name_for(value: str, known: dict) -> tuple[str, dict]:
    """--cli NAME: a known CLI name, or a command (contains a space or is on PATH)."""
    if value in known:
        return value, {}
    if " " in value.strip() or shutil.which(value) or os.path.isfile(value):
        return "batch-cli", {"batch-cli": {"command": value}}
    raise UsageError(f"--cli {value!r}: unknown CLI{_did_you_mean(value, sorted(known))}; "
                     "define it under agent_clis in the batch file, or give a command")


def agent_section(bf: BatchFile, *, agents: int | None, cli: str | None) -> tuple[dict, list]:
    """The `agent_clis` and `agents` config sections for an embedded run.

    Without `agents:` in the file: N agents (`--agents`, default 4) named `agent-1..N`, role
    `worker`, running `--cli` (or the file's only agent_clis entry). With `agents:` in the file,
    `--cli` replaces every entry's CLI and `--agents` the count of a single entry.
    """
    from .config import BUILTIN_CLIS

    clis_raw = dict(bf.agent_clis) if isinstance(bf.agent_clis, dict) else bf.agent_clis
    if not isinstance(clis_raw, dict):
        raise BatchFileError(bf.path, "agent_clis", "must be a mapping of CLI name → {command: …}")
    known = {**{k: None for k in BUILTIN_CLIS}, **clis_raw}
    cli_name = None
    if cli:
        cli_name, extra = _cli_name_for(cli, known)
        clis_raw.update(extra)
    if agents is not None and agents < 1:
        raise UsageError("--agents must be >= 1")
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
        return clis_raw, specs
    if not cli_name:
        if len(clis_raw) == 1:
            cli_name = next(iter(clis_raw))
        else:
            raise UsageError("no agents: pass --cli NAME (a CLI from agent_clis, a built-in like "
                             "claude, or a command), or define agents: in the batch file")
    return clis_raw, [{"name": "agent", "role": "worker", "cli": cli_name,
                       "count": agents or DEFAULT_AGENTS}]


def check_agents(bf: BatchFile, clis: dict, agents: list, *, town_root: str = "/tmp") -> None:
    """Validate the agent sections through the daemon's config schema; roles must be served."""
    from . import config as cfgmod

    try:
        cfg = cfgmod.from_dict({"agent_clis": clis, "agents": agents,
                                "town": {"root": town_root}}, bf.path, env={},
                               check_files=False)
    except cfgmod.ConfigError as e:
        key, msg = e.problems[0]
        raise BatchFileError(bf.path, key, msg) from None
    known = cfg.clis()
    for i, a in enumerate(cfg.agents):
        if a.cli not in known:
            raise BatchFileError(bf.path, f"agents[{i}].cli",
                                 f"unknown CLI {a.cli!r}{_did_you_mean(a.cli, sorted(known))}")
    expanded = cfg.expanded_agents()
    names = set()
    for a in expanded:
        if a.name in names:
            raise BatchFileError(bf.path, "agents", f"agent name {a.name!r} is defined twice")
        names.add(a.name)
    roles = {a.role for a in expanded}
    for t in bf.tasks:
        if t.role and t.role not in roles:
            raise BatchFileError(bf.path, t.entry(), f"role {t.role!r} has no agent "
                                                     f"(agents have: {', '.join(sorted(roles))})")


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def check_batch_id(bid: str) -> str:
    if not BATCH_ID_RE.fullmatch(bid or ""):
        raise UsageError(f"batch id {bid!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return bid


_ = dataclasses  # (re-exported helpers may use it)
