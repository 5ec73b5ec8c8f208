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

from tinytownd.store import fit

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

    def size(self) -> int:
        """Tasks, or work items for a mission."""
        if self.kind == "mission":
            items = (self.mission or {}).get("work_items")
            return len(items) if isinstance(items, list) else 0
        return len(self.tasks)


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
    `--cli` replaces every entry's CLI and `--agents` the count of a single entry. Agents work in
    the current directory unless their entry names a `workdir` (relative = to the current dir).
    Every agent gets TINYTOWND_BATCH_DIR = the batch file's directory, so a command can name
    scripts next to the file (`python3 "$TINYTOWND_BATCH_DIR/agents/x.py"`) from any cwd.
    """
    from tinytownd.config import BUILTIN_CLIS

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
        return clis_raw, specs
    if not cli_name:
        if len(clis_raw) == 1:
            cli_name = next(iter(clis_raw))
        else:
            raise UsageError("no agents: pass --cli NAME (a CLI from agent_clis, a built-in like "
                             "claude, or a command), or define agents: in the batch file")
    return clis_raw, [{"name": "agent", "role": "worker", "cli": cli_name,
                       "count": agents or DEFAULT_AGENTS, "workdir": os.path.abspath("."),
                       "env": {"TINYTOWND_BATCH_DIR": file_dir}}]


def check_agents(bf: BatchFile, clis: dict, agents: list, *, town_root: str = "/tmp") -> None:
    """Validate the agent sections through the daemon's config schema; roles must be served."""
    from tinytownd import config as cfgmod

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
    words = [fit.agent_words(a.role, a.name, a.tags) for a in expanded]
    for t in bf.tasks:
        if t.role and t.role not in roles:
            raise BatchFileError(bf.path, t.entry(), f"role {t.role!r} has no agent "
                                                     f"(agents have: {', '.join(sorted(roles))})")
        if t.tags and not t.role and not any(fit.task_fits(t.tags, w) for w in words):
            raise BatchFileError(bf.path, t.entry(),
                                 f"tags {list(t.tags)} fit no agent (an agent takes a tagged task "
                                 "when one tag is its role, its name or one of its tags)")


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def check_batch_id(bid: str) -> str:
    if not BATCH_ID_RE.fullmatch(bid or ""):
        raise UsageError(f"batch id {bid!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return bid




# ----------------------------------------------------------------------------- the run
SUBMIT_CHUNK = 250
RECOUNT_INTERVAL_S = 1.0
NOTIFY_POLL_S = 0.25


class BatchRun:
    """Submission, progress following and the summary of one batch on one town.

    `r` is a redis client with decode_responses=True; `keys` the town's Keys. Greenlet-friendly:
    every wait is a socket wait (pubsub) or gevent.sleep.
    """

    def __init__(self, bf: BatchFile, batch_id: str, r, keys, *, reporter=None, log=None):
        self.bf = bf
        self.id = batch_id
        self.r = r
        self.k = keys
        self.reporter = reporter
        self.log = log
        self.ids: dict[str, str] = {}         # file id → task uuid
        self.state: dict[str, str] = {}       # task uuid → last seen state
        self.n_terminal = 0
        self.stop_requested = False
        self.t_submit = None
        self.submit_s = 0.0
        self._pubsub = None
        self._states_loaded = False           # self.state holds every task's state already
        self._agent_names: dict[str, str] = {}

    # --- meta -------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.r.exists(self.k.batch(self.id)))

    def write_meta(self, *, resume: bool) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        p = self.r.pipeline(transaction=False)
        p.hsetnx(self.k.batch(self.id), "created_at", now)
        p.hset(self.k.batch(self.id), mapping={
            "state": "running", "file": os.path.abspath(self.bf.path), "digest": self.bf.digest,
            "total": str(self.bf.size()), "kind": self.bf.kind, "updated_at": now})
        p.hincrby(self.k.batch(self.id), "runs", 1)
        p.execute()

    def set_state(self, state: str, **extra: Any) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.r.hset(self.k.batch(self.id), mapping={"state": state, "updated_at": now,
                                                    **{a: str(b) for a, b in extra.items()}})

    # --- submission ---------------------------------------------------------------------
    def subscribe(self) -> None:
        """SUBSCRIBE before submitting, so no terminal transition is missed."""
        self._pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.k.notify)

    def submit(self, on_chunk=None) -> tuple[int, int]:
        """Submit every file task not yet submitted; return (new, already there).

        Each chunk is one MULTI/EXEC: task hash + daemon task meta + backlog entry + the
        `batch:<bid>:ids` mapping + the `batch:<bid>:tasks` list, so after a crash a file id is
        either fully submitted or not at all. `on_chunk([(file id, task id), ...])` is called
        after each chunk lands (the dispatcher starts handing out the first tasks while the
        rest are still being submitted).
        """
        from tinytownd.store.town import Town

        town = Town(self.r, self.k, log=self.log)
        t0 = time.monotonic()
        self.t_submit = t0
        known = {t.id for t in self.bf.tasks}
        # (ids of tasks no longer in the file are left alone: the batch follows the file)
        self.ids = {fid: tid for fid, tid in
                    (self.r.hgetall(self.k.batch_ids(self.id)) or {}).items() if fid in known}
        # a mapping whose task hash vanished (deleted by hand) counts as not submitted
        if self.ids:
            fids = list(self.ids)
            p = self.r.pipeline(transaction=False)
            for fid in fids:
                p.exists(self.k.task(self.ids[fid]))
            for fid, ok in zip(fids, p.execute()):
                if not ok:
                    del self.ids[fid]
        todo = [t for t in self.bf.tasks if t.id not in self.ids]
        k = self.k
        for i in range(0, len(todo), SUBMIT_CHUNK):
            cmds: list[tuple] = []
            last = None
            new_ids = {}
            for t in todo[i:i + SUBMIT_CHUNK]:
                # The runtime's claim: a task fits an agent when it has no tags or one of its
                # tags is the agent's role, `role:<role>`, name or one of its tags. So the batch
                # link lives in the task meta (and batch:<bid>:tasks), never in the tags.
                tags = fit.role_tags(t.tags, t.role)
                tid, hset = town.create_task_cmd(t.description, tags=tags)
                meta = ["HSET", k.task_meta(tid), "batch", self.id, "batch_task", t.id]
                if t.max_attempts is not None:
                    meta += ("max_attempts", str(t.max_attempts))
                if t.timeout_s is not None:
                    meta += ("timeout_s", repr(float(t.timeout_s)))
                if t.role:
                    meta += ("role", t.role)
                cmds += (hset, tuple(meta), ("RPUSH", k.backlog, tid),
                         ("HSET", k.batch_ids(self.id), t.id, tid),
                         ("RPUSH", k.batch_tasks(self.id), tid))
                new_ids[t.id] = tid
                last = tid
            town.send_raw(cmds, transaction=True)     # one MULTI/EXEC per chunk, one write
            self.ids.update(new_ids)
            # one wake-up per chunk for idle agents (Town.backlog_add sends one per task)
            self.r.publish(self.k.notify, town.backlog_note(last, batch=self.id))
            if on_chunk is not None:
                on_chunk(list(new_ids.items()))
        self.submit_s = time.monotonic() - t0
        return len(todo), len(self.bf.tasks) - len(todo)

    def requeue_lost(self) -> int:
        """Resume: a `pending` task of this batch that is in no backlog gets pushed again."""
        tids = [self.ids[t.id] for t in self.bf.tasks if t.id in self.ids]
        states = self._states(tids)
        pending = [tid for tid, st in states.items() if st == "pending"]
        if not pending:
            return 0
        queued = set(self.r.lrange(self.k.backlog, 0, -1))
        lost = [tid for tid in pending if tid not in queued]
        if lost:
            p = self.r.pipeline(transaction=True)
            for tid in lost:
                p.rpush(self.k.backlog, tid)
            p.execute()
            self.r.publish(self.k.notify, json.dumps({"task": lost[-1], "state": "pending",
                                                      "backlog": True, "batch": self.id}))
        return len(lost)

    # --- following ----------------------------------------------------------------------
    def _states(self, tids) -> dict[str, str]:
        out: dict[str, str] = {}
        tids = list(tids)
        for i in range(0, len(tids), 1000):
            p = self.r.pipeline(transaction=False)
            chunk = tids[i:i + 1000]
            for tid in chunk:
                p.hget(self.k.task(tid), "state")
            for tid, st in zip(chunk, p.execute()):
                out[tid] = st or "pending"
        return out

    def recount(self, *, all_tasks: bool = False) -> None:
        from tinytownd.store.wire import TASK_TERMINAL

        tids = list(self.ids.values()) if all_tasks else \
            [t for t in self.ids.values() if self.state.get(t) not in TASK_TERMINAL]
        for tid, st in self._states(tids).items():
            self._set(tid, st)

    def counts(self):
        from tinytownd.batch.progress import Counts

        c = Counts(total=len(self.bf.tasks))
        for tid in self.ids.values():
            st = self.state.get(tid, "pending")
            if st == "completed":
                c.completed += 1
            elif st in ("failed", "cancelled"):
                c.failed += 1
            elif st == "running":
                c.running += 1
            else:
                c.queued += 1
        c.queued += max(0, len(self.bf.tasks) - len(self.ids))
        return c

    def _notes(self, timeout: float, done=lambda: False):
        """Notify messages (parsed JSON objects) arriving within `timeout`, until `done()`.

        A lost subscription is logged and renewed and ends the wait: the periodic re-count
        covers whatever was missed. Without a subscription this just sleeps."""
        ps = self._pubsub
        if ps is None:
            import gevent
            gevent.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        while (wait := deadline - time.monotonic()) > 0 and not done():
            try:
                msg = ps.get_message(timeout=wait)
            except Exception as e:  # connection lost
                if self.log:
                    self.log.warning("batch notify subscription lost", error=str(e))
                self._resubscribe()
                return
            if msg is None:
                continue
            try:
                note = json.loads(msg["data"])
            except (ValueError, TypeError):
                continue
            if isinstance(note, dict):
                yield note

    def _drain_notifications(self, timeout: float) -> int:
        """Apply pending notify messages (waiting up to `timeout` for the first)."""
        from tinytownd.store.wire import TASK_TERMINAL

        n = 0
        for note in self._notes(timeout, done=lambda: self.n_terminal >= len(self.ids)):
            tid, st = note.get("task"), note.get("state")
            if st in TASK_TERMINAL and tid in self.state:
                self._set(tid, st)
                n += 1
        return n

    def _set(self, tid: str, st: str) -> None:
        from tinytownd.store.wire import TASK_TERMINAL
        old = self.state.get(tid)
        if old == st:
            return
        self.state[tid] = st
        self.n_terminal += (st in TASK_TERMINAL) - (old in TASK_TERMINAL)
        self._changed(tid, old, st)

    def _changed(self, tid: str, old: str | None, st: str) -> None:
        """Hook: a task of the batch changed state (DispatchingBatchRun refills inboxes)."""

    def _resubscribe(self) -> None:
        try:
            if self._pubsub is not None:
                self._pubsub.close()
        except Exception:
            pass
        self._pubsub = None
        try:
            self.subscribe()
        except Exception:
            import gevent
            gevent.sleep(0.5)

    def follow(self, *, stop_event=None, on_tick=None) -> bool:
        """Wait until every task is terminal (True) or a stop is requested (False)."""
        import gevent

        if not self._states_loaded:
            self.recount(all_tasks=True)
        last_recount = time.monotonic()
        notes = 0
        while True:
            c = self.counts()
            if self.reporter:
                self.reporter.update(c)
            if c.finished:
                # trust but verify: a final re-count of everything before declaring victory
                self.recount(all_tasks=True)
                c = self.counts()
                if c.finished:
                    return True
            if self.stop_requested or (stop_event is not None and stop_event.is_set()):
                return False
            if on_tick is not None:
                on_tick()
            notes += self._drain_notifications(NOTIFY_POLL_S)
            # The re-count is the safety net (and the running/queued split): every second when
            # notifications are quiet, every 3 s while they flow (less load on a busy run).
            interval = RECOUNT_INTERVAL_S if not notes else 3 * RECOUNT_INTERVAL_S
            if time.monotonic() - last_recount >= interval:
                notes = 0
                try:
                    self.recount()
                except Exception as e:  # Redis blip: report and keep following
                    if self.log:
                        self.log.warning("batch re-count failed", error=str(e))
                    gevent.sleep(0.5)
                last_recount = time.monotonic()

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
            self._pubsub = None

    # --- summary ------------------------------------------------------------------------
    def _agent_name(self, aid: str | None) -> str | None:
        if not aid:
            return None
        if aid not in self._agent_names:
            self._agent_names[aid] = self.r.hget(self.k.agent(aid), "name") or aid
        return self._agent_names[aid]

    def rows(self) -> list[dict]:
        from tinytownd.store.wire import parse_ts

        out = []
        specs = self.bf.tasks
        for i in range(0, len(specs), 500):
            chunk = specs[i:i + 500]
            p = self.r.pipeline(transaction=False)
            for t in chunk:
                tid = self.ids.get(t.id)
                p.hgetall(self.k.task(tid) if tid else "tt:-")
                p.hgetall(self.k.task_meta(tid) if tid else "tt:-")
            res = p.execute()
            for j, t in enumerate(chunk):
                h, m = res[2 * j] or {}, res[2 * j + 1] or {}
                dur = None
                if h.get("started_at") and h.get("completed_at"):
                    try:
                        dur = round((parse_ts(h["completed_at"]) -
                                     parse_ts(h["started_at"])).total_seconds(), 3)
                    except ValueError:
                        dur = None
                try:
                    attempts = int(m.get("attempts") or 0)
                except ValueError:
                    attempts = 0
                st = h.get("state") or ("pending" if h else "unsubmitted")
                if st in ("completed", "failed") and attempts == 0:
                    attempts = 1
                out.append({"id": t.id, "task_id": self.ids.get(t.id), "state": st,
                            "attempts": attempts,
                            "agent": self._agent_name(h.get("assigned_to") or m.get("agent")),
                            "duration_s": dur, "result": h.get("result"),
                            "started_at": h.get("started_at"),
                            "completed_at": h.get("completed_at"),
                            **({"error": m["last_error"]} if m.get("last_error") and
                               st != "completed" else {})})
        return out


PREFETCH = 2
FULL_RECOUNT_EVERY = 10


class DispatchingBatchRun(BatchRun):
    """Embedded task batches: the batch is its town's only dispatcher.

    The runtime's backlog claiming is off in the embedded config; instead every agent's inbox is
    kept PREFETCH deep with `Town.assign` (one running + one waiting), so an agent that finishes a
    round takes its next task at once, without the claim hop through the backlog service. A task
    goes to an agent when it has no tags or one of its tags is the agent's role, `role:<role>`,
    name or one of its tags (the runtime's claim rule). Each hand-out is one MULTI/EXEC (LREM from
    the backlog + the assignment), so a task is always either queued in the backlog or assigned in
    an inbox; after a crash the agents' in-flight and inbox messages are redelivered by the
    runtime, and `requeue_lost` puts a pending task that is in no queue back in the backlog.
    """

    def __init__(self, *a, agents: list[tuple[str, set]] = (), **kw):
        super().__init__(*a, **kw)
        self.agent_specs = list(agents)      # (name, words)
        self.words: dict[str, set] = {}      # aid -> words
        self.out: dict[str, set] = {}        # aid -> tids handed to it, not terminal yet
        self.owner: dict[str, str] = {}      # tid -> aid
        self.queue: list[str] = []           # pending tids in backlog order
        self.task_tags: dict[str, tuple] = {}
        self.dispatching = False
        self._town = None
        self._requeue: list[str] = []
        self._given: dict[str, float] = {}   # tid -> when we handed it out (monotonic)
        self._read_t = 0.0                    # when the state being applied was read
        self._soon = None                     # the pending _dispatch_soon greenlet
        self._recounts = 0
        self._spec = None                     # file id -> TaskSpec (feed)

    def recount(self, *, all_tasks: bool = False) -> None:
        """Re-read states. Mostly just the tasks handed out (what rounds and recovery change);
        every FULL_RECOUNT_EVERY-th time every unfinished one (the queued tasks only change if
        someone outside the batch touches them)."""
        self._read_t = time.monotonic()
        self._recounts += 1
        if all_tasks or self._recounts % FULL_RECOUNT_EVERY == 0:
            super().recount(all_tasks=all_tasks)
        else:
            for tid, st in self._states(list(self.owner)).items():
                self._set(tid, st)
        self._read_t = 0.0

    def wait_agents(self, timeout: float = 30.0) -> None:
        import gevent
        names = [n for n, _w in self.agent_specs]
        deadline = time.monotonic() + timeout
        while True:
            aids = self.r.hmget(self.k.agent_names, names) if names else []
            if all(aids) or time.monotonic() > deadline:
                break
            gevent.sleep(0.05)
        for (name, words), aid in zip(self.agent_specs, aids):
            if aid:
                self.words[aid] = set(words)
                self.out.setdefault(aid, set())
        if not self.words:
            raise RuntimeError("no agent of the batch registered within "
                               f"{timeout:.0f}s")

    def start_dispatch(self, *, fresh: bool = False) -> None:
        """Load what the dispatcher needs and hand out the first tasks. `fresh`: every task was
        just submitted by this run (nothing resumed), so all are pending and in the backlog in
        file order, and reading 2 fields of every task back is skipped."""
        from tinytownd.store.town import Town
        from tinytownd.store.wire import TASK_TERMINAL

        self._town = Town(self.r, self.k, log=self.log)
        self._learn_tags(self.ids.items())
        if fresh:
            self.n_terminal = 0
            self._states_loaded = True
            self.dispatching = True
            self.feed([(t.id, self.ids[t.id]) for t in self.bf.tasks if t.id in self.ids])
            return
        mine = set(self.ids.values())
        tids = list(mine)
        p = self.r.pipeline(transaction=False)
        for tid in tids:
            p.hmget(self.k.task(tid), "state", "assigned_to")
        res = p.execute()
        in_backlog = [t for t in self.r.lrange(self.k.backlog, 0, -1) if t in mine]
        for tid, (st, aid) in zip(tids, res):
            st = st or "pending"
            self.state[tid] = st
            if st not in TASK_TERMINAL and st != "pending" and aid in self.words:
                self.owner[tid] = aid
                self.out[aid].add(tid)
        self.n_terminal = sum(1 for t in tids if self.state[t] in TASK_TERMINAL)
        self._states_loaded = True
        seen = set()
        for tid in in_backlog:
            if tid not in seen and self.state.get(tid) == "pending":
                self.queue.append(tid)
                seen.add(tid)
        self.dispatching = True
        self.dispatch()

    def _learn_tags(self, pairs) -> None:
        """The matching words of (file id, task id) pairs: their tags plus `role:<role>`."""
        if self._spec is None:
            self._spec = self.bf.by_id()
        for fid, tid in pairs:
            t = self._spec.get(fid)
            if t is not None:
                self.task_tags[tid] = tuple(fit.role_tags(t.tags, t.role))

    def feed(self, pairs) -> None:
        """Newly submitted (file id, task id) pairs of a fresh dispatch: pending, in the backlog
        in this order. Queued behind what is there, then handed out."""
        self._learn_tags(pairs)
        for _fid, tid in pairs:
            self.state[tid] = "pending"
            self.queue.append(tid)
        self.dispatch()

    def _changed(self, tid: str, old: str | None, st: str) -> None:
        from tinytownd.store.wire import TASK_TERMINAL
        aid = self.owner.get(tid)
        if aid is None:
            return
        if st in TASK_TERMINAL:
            del self.owner[tid]
            self.out[aid].discard(tid)
            self._dispatch_soon()
        elif st == "pending" and self._given.get(tid, 0.0) < self._read_t:
            # handed back (recovery moved it to the backlog) — a state read *after* we gave it
            # out; a re-count that read `pending` before our MULTI landed is just stale
            del self.owner[tid]
            self.out[aid].discard(tid)
            self._requeue.append(tid)

    def _dispatch_soon(self) -> None:
        """(performance helper) One dispatch for every notification read meanwhile: the refill
        runs in its own greenlet once the follower waits, so the follower never waits on a
        MULTI/EXEC per finished task and agents' inboxes do not run dry behind it."""
        if self._soon is not None:
            return
        import gevent

        def run():
            self._soon = None
            try:
                self.dispatch()
            except Exception as e:   # Redis blip: the next finished task or re-count retries
                if self.log:
                    self.log.warning("batch dispatch failed", error=str(e))
        self._soon = gevent.spawn(run)

    def _fits(self, tid: str, aid: str) -> bool:
        return fit.task_fits(self.task_tags.get(tid), self.words[aid])

    def dispatch(self) -> int:
        """Top every agent's inbox up to PREFETCH tasks (fair: one each per pass)."""
        if not self.dispatching:
            return 0
        if self._requeue:
            back, self._requeue = self._requeue, []
            queued = set(self.r.lrange(self.k.backlog, 0, -1))
            p = self.r.pipeline(transaction=False)
            for tid in back:
                if tid not in queued:
                    p.rpush(self.k.backlog, tid)
            p.execute()
            self.queue.extend(t for t in back if t not in self.queue)
        if not self.queue:
            return 0
        picks: list[tuple[str, str]] = []
        for depth in range(1, PREFETCH + 1):
            for aid in self.words:
                if len(self.out[aid]) >= depth or not self.queue:
                    continue
                idx = next((i for i, tid in enumerate(self.queue[:500]) if self._fits(tid, aid)),
                           None)
                if idx is None:
                    continue
                tid = self.queue.pop(idx)
                self.out[aid].add(tid)
                self.owner[tid] = aid
                picks.append((aid, tid))
        if not picks:
            return 0
        from tinytownd.store.wire import hash_ts

        cmds = []
        now = hash_ts()
        for aid, tid in picks:
            cmds.append(("LREM", self.k.backlog, 1, tid))
            cmds += self._town.assign_cmds(aid, tid, self.task_tags.get(tid, ()), now)
        try:
            self._town.send_raw(cmds, transaction=True)     # one MULTI/EXEC, one write
        except Exception as e:   # Redis blip: put them back; the next pass retries
            for aid, tid in reversed(picks):
                self.out[aid].discard(tid)
                self.owner.pop(tid, None)
                self.queue.insert(0, tid)
            if self.log:
                self.log.warning("batch dispatch failed", error=str(e))
            return 0
        now = time.monotonic()
        for _aid, tid in picks:
            self.state[tid] = "assigned"
            self._given[tid] = now
        return len(picks)


class MissionBatch(BatchRun):
    """A batch whose file is a mission: started through the missions API (compile + store), driven
    by the daemon's MissionEngine; progress and the summary are the mission's work items.

    Finished when the mission is `completed`/`failed`, or when it is stuck: nothing ready, assigned
    or running for STUCK_S (an item used up its retries and is blocked, waiting for help).
    """

    STUCK_S = 3.0

    def __init__(self, *a, roles: set[str] | None = None, **kw):
        super().__init__(*a, **kw)
        self.roles = roles
        self.mid: str | None = None
        self.items: dict[str, Any] = {}      # wid -> WorkItem
        self.mission_state = "planning"
        self._stuck_since: float | None = None
        self._meta: dict = {}
        self._tids: set = set()
        self.total = 0

    def _store(self):
        from tinytownd.missions.storage import MissionStore
        return MissionStore(self.r, self.k)

    def submit(self) -> tuple[int, int]:
        from tinytownd.missions import compile as mc

        t0 = time.monotonic()
        store = self._store()
        mid = self.r.hget(self.k.batch(self.id), "mission")
        if mid and store.get_mission(mid) is not None:
            self.mid = mid
            self.ids = self.r.hgetall(self.k.batch_ids(self.id)) or {}
            self.submit_s = time.monotonic() - t0
            self.total = len(self.ids)
            return 0, self.total
        text = yaml.safe_dump(self.bf.mission, sort_keys=False)
        try:
            c = mc.compile_text(text, self.bf.path, roles=self.roles)
        except mc.MissionFileError as e:
            raise BatchFileError(self.bf.path, "work_items", "; ".join(e.problems)) from None
        p = self.r.pipeline(transaction=True)
        p.hset(self.k.batch(self.id), "mission", c.mission.id)
        p.delete(self.k.batch_ids(self.id))
        p.hset(self.k.batch_ids(self.id), mapping=c.file_ids)
        p.execute()
        store.create(c.mission, c.items, c.cmd_watches, c.meta, c.log)
        self.mid = c.mission.id
        self.ids = dict(c.file_ids)
        self.total = len(self.ids)
        self.submit_s = time.monotonic() - t0
        return self.total, 0

    def requeue_lost(self) -> int:
        return 0

    def recount(self, *, all_tasks: bool = False) -> None:
        snap = self._store().load(self.mid)
        if snap.mission is not None:
            self.mission_state = snap.mission.state
        self.items = dict(snap.items)
        self._meta = snap.meta or {}
        self._tids |= set(snap.task_ids or ())
        for fid, wid in self.ids.items():
            it = self.items.get(wid)
            st = _ITEM_STATE.get(it.status if it else "pending", "pending")
            self._set(wid, st)

    def _drain_notifications(self, timeout: float) -> int:
        """Collect the mission's task ids from terminal notifications (the engine drops processed
        tasks from the mission's task set, and the summary wants every attempt)."""
        from tinytownd.store.wire import TASK_TERMINAL

        n = 0
        for note in self._notes(timeout):
            if note.get("mission") == self.mid and note.get("task"):
                self._tids.add(note["task"])
                n += 1
                if note.get("state") in TASK_TERMINAL:
                    return n     # re-read the mission at once
        return n

    def counts(self):
        c = super().counts()
        c.total = self.total or len(self.ids)
        if self.mission_state in ("completed", "failed"):
            return c
        if c.running == 0 and not any(getattr(it, "status", "") in ("ready", "assigned",
                                                                    "running")
                                      for it in self.items.values()) and c.done < c.total:
            now = time.monotonic()
            self._stuck_since = self._stuck_since or now
            if now - self._stuck_since >= self.STUCK_S:
                c.queued = 0       # stuck: what did not run counts as failed
                c.failed = c.total - c.completed
        else:
            self._stuck_since = None
        return c

    def follow(self, *, stop_event=None, on_tick=None) -> bool:

        while True:
            self.recount()
            c = self.counts()
            if self.reporter:
                self.reporter.update(c)
            if c.finished:
                return True
            if self.stop_requested or (stop_event is not None and stop_event.is_set()):
                return False
            self._drain_notifications(0.5)

    def rows(self) -> list[dict]:
        from tinytownd.store.wire import parse_ts

        self.recount()
        by_wid: dict[str, dict] = {}
        n_tasks: dict[str, int] = {}
        if self._tids:
            p = self.r.pipeline(transaction=False)
            order = list(self._tids)
            for tid in order:
                p.hgetall(self.k.task(tid))
            for tid, h in zip(order, p.execute()):
                tags = []
                try:
                    tags = json.loads(h.get("tags") or "[]")
                except ValueError:
                    pass
                wid = next((t[10:] for t in tags if isinstance(t, str)
                            and t.startswith("work-item:")), None)
                if not wid:
                    continue
                n_tasks[wid] = n_tasks.get(wid, 0) + 1
                if wid not in by_wid or h.get("created_at", "") >= by_wid[wid].get("created_at", ""):
                    by_wid[wid] = h
        out = []
        stuck = self.counts().queued == 0
        for fid, wid in self.ids.items():
            it = self.items.get(wid)
            status = it.status if it else "pending"
            st = _ITEM_STATE.get(status, "pending")
            if stuck and st in ("pending", "assigned"):
                st = "failed"
            h = by_wid.get(wid, {})
            dur = None
            if h.get("started_at") and h.get("completed_at"):
                try:
                    dur = round((parse_ts(h["completed_at"]) -
                                 parse_ts(h["started_at"])).total_seconds(), 3)
                except ValueError:
                    pass
            try:
                attempts = int(self._meta.get(f"attempts:{wid}") or 0)
            except ValueError:
                attempts = 0
            attempts = max(attempts, n_tasks.get(wid, 0))
            out.append({"id": fid, "task_id": h.get("id"), "work_item": wid, "state": st,
                        "item_status": status, "attempts": attempts,
                        "agent": self._agent_name(getattr(it, "assigned_to", None)
                                                  or h.get("assigned_to")),
                        "duration_s": dur, "result": h.get("result"),
                        "started_at": h.get("started_at"), "completed_at": h.get("completed_at")})
        return out


_ITEM_STATE = {"done": "completed", "blocked": "failed", "running": "running",
               "assigned": "running", "ready": "pending", "pending": "pending"}


# ----------------------------------------------------------------------------- command
def _err(msg: str) -> None:
    import sys
    print(f"tinytownd batch: {msg}", file=sys.stderr, flush=True)


def _sock_path(root: Path, name: str) -> str:
    """`root/name`, or a short /tmp path when that would exceed the unix socket limit."""
    p = root / name
    if len(str(p)) <= 100:
        return str(p)
    h = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    short = Path("/tmp") / f"ttbatch-{h}"
    short.mkdir(mode=0o700, exist_ok=True)
    return str(short / name)


def embedded_config(bf: BatchFile, root: Path, clis: dict, agents: list, *,
                    appendfsync: str | None = None, log_level: str = "info"):
    """The daemon config of an embedded batch: town root = the batch dir, everything under it."""
    from tinytownd import config as cfgmod

    fsync = appendfsync or "everysec"
    data = {
        "town": {"name": "batch", "root": str(root)},
        "redis": {"socket": _sock_path(root, "redis.sock"),
                  "appendonly": fsync not in ("off",), "save": "",
                  "appendfsync": fsync if fsync in ("always", "everysec", "no") else "everysec"},
        "control": {"socket": _sock_path(root, "tinytownd.sock")},
        "logging": {"level": log_level, "file": "logs/tinytownd.log"},
        "daemon": {"drain_timeout_s": 30.0},
        # task batches hand tasks to agents themselves (DispatchingBatchRun); missions assign
        # through the mission engine. Either way nothing else claims from this town's backlog.
        "runtime": {"backlog_claim": bf.kind != "tasks"},
        # (performance helper) a task batch has no missions: no mission engine reading the
        # tags of every finished task from the notify channel
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


class _DirLock:
    """flock on DIR/batch.lock: one process per batch directory."""

    def __init__(self, root: Path):
        self.path = root / "batch.lock"
        self.fd = None

    def acquire(self) -> None:
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(self.fd, 32).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise UsageError(f"batch directory {self.path.parent} is in use by another process"
                             + (f" (pid {other})" if other else ""))
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Stopper:
    """SIGINT/SIGTERM: first = drain (resumable), second = stop now."""

    def __init__(self):
        from gevent.event import Event
        self.event = Event()
        self.now = Event()
        self.signame = None
        self._handles = []

    def install(self) -> None:
        import signal

        import gevent
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._handles.append(gevent.signal_handler(sig, self._on, sig))

    def _on(self, sig) -> None:
        import signal
        if self.event.is_set():
            self.now.set()
        self.signame = signal.Signals(sig).name
        self.event.set()

    def uninstall(self) -> None:
        for h in self._handles:
            try:
                h.cancel()
            except Exception:
                pass


def _make_reporter(mode: str, batch_id: str):
    import sys

    from tinytownd.batch.progress import JsonProgress, TtyBar

    out = sys.stdout
    if mode == "auto":
        try:
            mode = "bar" if out.isatty() else "json"
        except (AttributeError, ValueError):
            mode = "json"
    if mode == "bar":
        return TtyBar(out)
    if mode == "json":
        return JsonProgress(out, context={"batch_id": batch_id})
    return None


def _write_summary(path: str, doc: dict) -> None:
    from tinytownd.batch.progress import dumps
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        f.write(dumps(doc))
    os.replace(tmp, path)


def _finish(run: BatchRun, reporter, args, *, wall_s: float, completed_run: bool,
            interrupted: bool, mode: str, extra: dict | None = None) -> int:
    import sys

    from tinytownd.batch.progress import render_table, summarize

    rows = run.rows()
    doc = summarize(run.id, rows, wall_s=wall_s,
                    extra={"mode": mode, "file": os.path.abspath(run.bf.path),
                           "submit_s": round(run.submit_s, 3), "interrupted": interrupted,
                           **(extra or {})})
    t = doc["totals"]
    if t["completed"] == t["total"]:
        code = EXIT_OK
    elif interrupted or t["running"] + t["queued"] > 0:
        code = EXIT_INTERRUPTED
    else:
        code = EXIT_FAILED
    doc["exit_code"] = code
    if args.summary:
        _write_summary(args.summary, doc)
    table = render_table(doc)
    if interrupted:
        table += (f"\ninterrupted ({'drained' if not completed_run else 'stopped'}): continue with"
                  f"  tinytownd batch {run.bf.path} --resume {run.id}"
                  + (f" --dir {args.dir}" if getattr(args, "dir", None) else ""))
    from tinytownd.batch.progress import JsonProgress
    if isinstance(reporter, JsonProgress):
        reporter.note("batch.summary", batch_id=run.id, totals=t, exit_code=code,
                      wall_time_s=doc["wall_time_s"], duration_p50_s=doc["duration_p50_s"],
                      duration_p95_s=doc["duration_p95_s"], summary_path=args.summary)
        print(table, file=sys.stderr, flush=True)
    else:
        print(table, flush=True)
    return code


def _announce(reporter, text: str, **fields) -> None:
    import sys
    from tinytownd.batch.progress import JsonProgress
    if isinstance(reporter, JsonProgress):
        reporter.note("batch.start", **fields)
    elif reporter is not None:
        reporter.note(text)
    else:
        print(text, file=sys.stderr, flush=True)


def main(args) -> int:
    """`tinytownd batch` (args from commands/batch_cmd.py). Returns the exit code."""
    try:
        bf = load(args.file)
    except BatchFileError as e:
        _err(str(e))
        return EXIT_USAGE
    try:
        batch_id = check_batch_id(args.resume or args.batch_id or new_batch_id())
        if bf.kind == "mission":
            check_mission(bf)
        if args.config:
            return _main_submit(bf, batch_id, args)
        return _main_embedded(bf, batch_id, args)
    except BatchFileError as e:
        _err(str(e))
        return EXIT_USAGE
    except UsageError as e:
        _err(str(e))
        return EXIT_USAGE


def check_mission(bf: BatchFile) -> None:
    """Validate a mission file up front (graph, ids, policy) with the missions compiler."""
    from tinytownd.missions import compile as mc
    try:
        mc.compile_text(yaml.safe_dump(bf.mission, sort_keys=False), bf.path, roles=None)
    except mc.MissionFileError as e:
        raise BatchFileError(bf.path, "work_items", "; ".join(e.problems)) from None


def _make_run(bf: BatchFile, batch_id: str, r, keys, *, reporter=None, log=None, roles=None,
              agents=None):
    if bf.kind == "mission":
        from tinytownd.missions.compile import known_roles
        return MissionBatch(bf, batch_id, r, keys, reporter=reporter, log=log,
                            roles=known_roles(roles or ()))
    if agents is not None:
        return DispatchingBatchRun(bf, batch_id, r, keys, reporter=reporter, log=log,
                                   agents=agents)
    return BatchRun(bf, batch_id, r, keys, reporter=reporter, log=log)


def _main_embedded(bf: BatchFile, batch_id: str, args) -> int:
    import gevent

    from tinytownd import logs
    from tinytownd.daemon.lifecycle import Daemon, StartError

    clis, agents = agent_section(bf, agents=args.agents, cli=args.cli)
    check_agents(bf, clis, agents)
    root = Path(args.dir or Path.cwd() / ".tinytownd" / "batches" / batch_id).absolute()
    state_file = root / "batch.json"
    if args.resume:
        if not state_file.exists():
            raise UsageError(f"no batch {batch_id!r} to resume in {root} (give --dir if it ran "
                             "elsewhere)")
        prev = json.loads(state_file.read_text())
        if prev.get("id") != batch_id:
            raise UsageError(f"{root} holds batch {prev.get('id')!r}, not {batch_id!r}")
    elif state_file.exists():
        raise UsageError(f"batch {batch_id!r} already exists in {root}: use --resume {batch_id}")
    root.mkdir(parents=True, exist_ok=True)
    lock = _DirLock(root)
    lock.acquire()
    try:
        if not args.resume:
            state_file.write_text(json.dumps({
                "id": batch_id, "file": os.path.abspath(bf.path), "digest": bf.digest,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "agent_clis": clis, "agents": agents}, indent=1) + "\n")
        cfg = embedded_config(bf, root, clis, agents, appendfsync=args.appendfsync)
        reporter = _make_reporter(args.progress, batch_id)
        _announce(reporter,
                  f"batch {batch_id}: {bf.size()} {'work items' if bf.kind == 'mission' else 'tasks'}, "
                  f"{len(cfg.expanded_agents())} agents (dir {root})",
                  batch_id=batch_id, tasks=bf.size(), kind=bf.kind,
                  agents=len(cfg.expanded_agents()),
                  dir=str(root), resume=bool(args.resume), mode="embedded")
        d = Daemon(cfg, install_signals=False)
        stopper = _Stopper()
        stopper.install()
        try:
            try:
                d.start()
            except StartError as e:
                _err(str(e))
                try:
                    d._shutdown(graceful=False)
                except Exception:
                    pass
                return EXIT_UNAVAILABLE if e.exit_code == 69 else EXIT_USAGE
            log = logs.get_logger("tinytownd.batch", batch=batch_id)
            runner = gevent.spawn(d.run)
            agent_words = [(a.name, fit.agent_words(a.role, a.name, a.tags))
                           for a in cfg.expanded_agents()]
            run = _make_run(bf, batch_id, d.ctx.clients.cmd, d.ctx.keys, reporter=reporter,
                            log=log, roles={a.role for a in cfg.expanded_agents()},
                            agents=agent_words if bf.kind == "tasks" else None)
            t0 = time.monotonic()
            try:
                run.subscribe()
                run.write_meta(resume=bool(args.resume))
                if isinstance(run, DispatchingBatchRun) and not args.resume and \
                        not run.r.exists(run.k.batch_ids(run.id)):
                    # a new batch (nothing of it in Redis): dispatch from the first chunk on
                    run.wait_agents()
                    run.start_dispatch(fresh=True)
                    new, old = run.submit(on_chunk=run.feed)
                    lost = 0
                else:
                    new, old = run.submit()
                    lost = run.requeue_lost() if args.resume else 0
                    if isinstance(run, DispatchingBatchRun):
                        run.wait_agents()
                        run.start_dispatch()
                log.info("batch submitted", new=new, existing=old, requeued=lost,
                         submit_s=round(run.submit_s, 3))
                done = run.follow(stop_event=stopper.event)
                interrupted = not done
                if interrupted:
                    if reporter is not None:
                        reporter.note(f"{stopper.signame or 'stop'}: draining (running tasks "
                                      "finish, queued ones stay for --resume)")
                    _drain_embedded(d, run, reporter, stopper)
                run.set_state("done" if done else "interrupted")
                c = run.counts()
                if reporter is not None:
                    reporter.finish(c)
                wall = time.monotonic() - t0
                code = _finish(run, reporter, args, wall_s=wall, completed_run=not stopper.now.is_set(),
                               interrupted=interrupted, mode="embedded",
                               extra={"dir": str(root), "agents": len(cfg.expanded_agents())})
            finally:
                run.close()
                d.request_stop(graceful=not stopper.now.is_set())
                runner.join(timeout=cfg.daemon.drain_timeout_s + 15)
                if not runner.dead:
                    runner.kill()
            return code
        finally:
            stopper.uninstall()
    finally:
        lock.release()


def _drain_embedded(d, run: BatchRun, reporter, stopper) -> None:
    """Stop claiming new work and let running rounds finish (until drain_timeout_s or a second
    signal), following the counts meanwhile."""
    import gevent

    if isinstance(run, DispatchingBatchRun):
        run.dispatching = False     # hand out nothing more; inboxes keep what they hold
    deadline = time.monotonic() + d.cfg.daemon.drain_timeout_s
    drains = [gevent.spawn(c.drain, deadline) for c in d.components]
    while time.monotonic() < deadline and not stopper.now.is_set():
        run._drain_notifications(0.25)
        run.recount()
        if reporter is not None:
            reporter.update(run.counts())
        if all(g.dead for g in drains):
            break
    run.recount(all_tasks=True)
    gevent.killall([g for g in drains if not g.dead], timeout=1)


def _main_submit(bf: BatchFile, batch_id: str, args) -> int:
    """-c CONFIG: submit to the town of a running daemon and follow its progress."""
    import sys

    from tinytownd import config as cfgmod
    from tinytownd import logs
    from tinytownd.store.keys import Keys
    from tinytownd.daemon.redis_clients import RedisUnavailable, check_server, make_clients

    try:
        cfg = cfgmod.load(args.config, check_files=False)
    except cfgmod.ConfigError as e:
        raise UsageError(str(e)) from None
    if bf.agents or args.agents or args.cli:
        print("tinytownd batch: note: -c submits to the daemon's agents; agents:/--agents/--cli "
              "are ignored", file=sys.stderr)
    if args.dir or args.appendfsync:
        print("tinytownd batch: note: --dir/--appendfsync only apply to embedded runs",
              file=sys.stderr)
    logs.configure("warning", "/dev/stderr")
    clients = make_clients(cfg, blocking_connections=1)
    try:
        try:
            check_server(clients.cmd, clients.redacted)
        except RedisUnavailable as e:
            _err(str(e))
            return EXIT_UNAVAILABLE
        keys = Keys(cfg.town.name)
        r = clients.cmd
        try:
            daemons = list(r.scan_iter(match=keys.daemon_pattern(), count=1000))
        except Exception as e:
            _err(f"Redis error: {e}")
            return EXIT_UNAVAILABLE
        if not daemons:
            _err(f"no tinytownd daemon is running town {cfg.town.name!r} at {clients.redacted}; "
                 f"start it (tinytownd run -c {args.config}) or run the batch embedded (no -c)")
            return EXIT_UNAVAILABLE
        from tinytownd.store.town import Town
        roles = {a.get("role_id") or "default" for a in Town(r, keys).list_agents()
                 if a.get("state") not in ("stopped", "error", "cold")}
        for t in bf.tasks:
            if t.role and t.role not in roles:
                raise BatchFileError(bf.path, t.entry(), f"role {t.role!r}: no live agent of "
                                     f"town {cfg.town.name!r} has it (roles: "
                                     f"{', '.join(sorted(roles)) or 'none'})")
        log = logs.get_logger("tinytownd.batch", batch=batch_id)
        run = _make_run(bf, batch_id, r, keys, log=log, roles=roles)
        if args.resume and not run.exists():
            raise UsageError(f"no batch {batch_id!r} in town {cfg.town.name!r} to resume")
        if not args.resume and run.exists():
            raise UsageError(f"batch {batch_id!r} already exists in town {cfg.town.name!r}: use "
                             f"--resume {batch_id}")
        reporter = _make_reporter(args.progress, batch_id)
        run.reporter = reporter
        _announce(reporter, f"batch {batch_id}: {bf.size()} {bf.kind} → town "
                  f"{cfg.town.name} ({len(daemons)} daemon(s))", batch_id=batch_id,
                  tasks=bf.size(), kind=bf.kind, town=cfg.town.name, resume=bool(args.resume),
                  mode="submit")
        stopper = _Stopper()
        stopper.install()
        t0 = time.monotonic()
        try:
            run.subscribe()
            run.write_meta(resume=bool(args.resume))
            run.submit()
            if args.resume:
                run.requeue_lost()
            done = run.follow(stop_event=stopper.event)
            if not done:
                withdrawn = _withdraw(run)
                if reporter is not None:
                    reporter.note(f"{stopper.signame or 'stop'}: {withdrawn} queued tasks "
                                  "withdrawn from the backlog; waiting for running ones")
                deadline = time.monotonic() + cfg.daemon.drain_timeout_s
                while time.monotonic() < deadline and not stopper.now.is_set():
                    run._drain_notifications(0.25)
                    run.recount()
                    c = run.counts()
                    if reporter is not None:
                        reporter.update(c)
                    if c.running == 0:
                        break
            run.set_state("done" if done else "interrupted")
            if reporter is not None:
                reporter.finish(run.counts())
            return _finish(run, reporter, args, wall_s=time.monotonic() - t0,
                           completed_run=not stopper.now.is_set(), interrupted=not done,
                           mode="submit", extra={"town": cfg.town.name})
        finally:
            run.close()
            stopper.uninstall()
    finally:
        clients.close()


def _withdraw(run: BatchRun) -> int:
    """Remove this batch's unstarted tasks from the backlog; they stay `pending` for --resume."""
    run.recount()
    pending = [tid for tid, st in run.state.items() if st == "pending"]
    n = 0
    for i in range(0, len(pending), 500):
        p = run.r.pipeline(transaction=False)
        for tid in pending[i:i + 500]:
            p.lrem(run.k.backlog, 1, tid)
        n += sum(int(x or 0) for x in p.execute())
    return n
