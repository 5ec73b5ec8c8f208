"""The batch file: its schema, `parse` / `load`, and the errors a batch reports as exit 2.

A batch file (YAML) is either a task list or a mission (the missions file format):

    tasks:                       # required unless the file is a mission
      - id: t1                   # optional (default: the 1-based position); unique; str or int
        description: "..."       # required, non-empty
        role: worker             # optional: only agents with this role take it
        tags: [a, b]             # optional: list of strings
        timeout_s: 60            # optional: per-attempt timeout (> 0)
        max_attempts: 2          # optional: attempts before `failed` (>= 1)
      - "a plain string is a task with only a description"
    defaults: {role, tags, timeout_s, max_attempts}   # optional, applied to every task
    name: "..."                                       # optional
    agent_clis: {NAME: {command: ..., timeout_s, max_attempts, env}}   # as in the daemon config
    agents: [{name, role, cli, count}]                                 # as in the daemon config
    workspace: {mode: worktree, ...}   # optional: every agent's workspace keys, below the CLI's
                                       # and the agent entry's own (README "Agent workspaces")

A mission file has `objective`, `policy`, `work_items` (and `title`) instead of `tasks`; its graph
is checked by the missions compiler (batch/mission.py). The agent sections stay raw YAML here:
batch/agents.py checks them through the daemon's config schema.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from tinytownd.config.yaml_file import TextFileError, read_utf8, safe_load, yaml_problem

MAX_BATCH_FILE_BYTES = 64 << 20   # ~1.8 million tasks of the bench's shape; larger is refused unread
TASK_KEYS = ("id", "description", "role", "tags", "timeout_s", "max_attempts")
DEFAULT_KEYS = ("role", "tags", "timeout_s", "max_attempts")
TOP_KEYS_TASKS = ("tasks", "defaults", "agent_clis", "agents", "name", "workspace")
MISSION_KEYS = ("objective", "policy", "work_items", "title")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class BatchFileError(Exception):
    """An invalid batch file; `str()` names the file and the offending entry."""

    def __init__(self, file: str, entry: str, problem: str):
        self.file, self.entry, self.problem = file, entry, problem
        super().__init__(f"{file}: {entry}: {problem}" if entry else f"{file}: {problem}")


class UsageError(Exception):
    """A bad combination of options, or a batch id that does not fit the state found."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of the file, defaults applied; `index` is its position in `tasks:`."""
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
    digest: str = ""                                 # of the parsed document
    name: str | None = None
    workspace: dict = field(default_factory=dict)    # raw YAML (checked as agents' keys)

    def by_id(self) -> dict[str, TaskSpec]:
        return {t.id: t for t in self.tasks}

    def size(self) -> int:
        """Tasks, or work items for a mission."""
        if self.kind == "mission":
            items = (self.mission or {}).get("work_items")
            return len(items) if isinstance(items, list) else 0
        return len(self.tasks)


def did_you_mean(key: str, known) -> str:
    """The error suffix for an unknown key: the closest known one, else the whole list."""
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
            raise BatchFileError(path, entry, f"unknown key {k!r}{did_you_mean(k, entry_keys)}")
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


def _task(spec: Any, i: int, defaults: dict, seen: dict[str, int], path: str) -> TaskSpec:
    """tasks[i] with the defaults applied; `seen` maps the ids so far to their index."""
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
                                   if k not in ("id", "description")}, TASK_KEYS, path, entry)}
    return TaskSpec(id=tid, description=desc, role=vals.get("role"), tags=vals.get("tags", ()),
                    timeout_s=vals.get("timeout_s"), max_attempts=vals.get("max_attempts"),
                    index=i)


def _mission(data: dict, path: str, digest: str) -> BatchFile:
    if "tasks" in data:
        raise BatchFileError(path, "tasks", "a file is either a task list or a mission "
                                            "(work_items), not both")
    allowed = MISSION_KEYS + ("agent_clis", "agents", "workspace")
    for k in data:
        if k not in allowed:
            raise BatchFileError(path, str(k), f"unknown key{did_you_mean(k, allowed)}")
    mission = {k: v for k, v in data.items() if k in MISSION_KEYS}
    return BatchFile(path=path, kind="mission", mission=mission,
                     agent_clis=data.get("agent_clis") or {}, agents=data.get("agents") or [],
                     digest=digest, workspace=_workspace(data, path))


def parse(data: Any, path: str = "<batch>") -> BatchFile:
    """Validate a parsed YAML document. Raises BatchFileError naming the first offending entry."""
    if not isinstance(data, dict):
        raise BatchFileError(path, "", "the top level must be a mapping with `tasks:` "
                                       "(or a mission with `work_items:`)")
    text = json.dumps(data, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if "work_items" in data or "objective" in data:
        return _mission(data, path, digest)
    for k in data:
        if k not in TOP_KEYS_TASKS:
            raise BatchFileError(path, str(k), f"unknown key{did_you_mean(k, TOP_KEYS_TASKS)}")
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
    seen: dict[str, int] = {}
    tasks = [_task(spec, i, defaults, seen, path) for i, spec in enumerate(tasks_raw)]
    return BatchFile(path=path, kind="tasks", tasks=tasks,
                     agent_clis=data.get("agent_clis") or {}, agents=data.get("agents") or [],
                     digest=digest, name=name, workspace=_workspace(data, path))


def _workspace(data: dict, path: str) -> dict:
    ws = data.get("workspace")
    if ws is None:
        return {}
    if not isinstance(ws, dict):
        raise BatchFileError(path, "workspace", "must be a mapping of workspace keys (mode, "
                                                "repo, base, branch, dir, commit, keep, setup)")
    return dict(ws)


def load(path: str) -> BatchFile:
    """Read and validate a batch file (BatchFileError on any problem, including I/O and YAML)."""
    try:
        text = read_utf8(path, MAX_BATCH_FILE_BYTES, "batch file")
    except TextFileError as e:
        raise BatchFileError(path, "", str(e)) from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        raise BatchFileError(path, "", f"invalid YAML: {yaml_problem(e)}") from None
    return parse(data, path)
