"""Helpers for the mission tests (no tests here): the mission files they run, a driver of the
pure scheduler, in-process engines, agent doubles that play agents through the Town API, a fake
`gh`, and a standalone engine process for kill -9 tests.

    python -m tests.support.missions engine URL TOWN TTL   # runs one MissionEngine until SIGTERM
"""
from __future__ import annotations

import json
import os
import stat
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import gevent
import gevent.event
import redis
import yaml

from tinytownd import config
from tinytownd.store import records
from tinytownd.daemon import redis_clients
from tinytownd.daemon.component import Context
from tinytownd.store.keys import Keys
from tinytownd.missions.compile import compile_text
from tinytownd.missions.engine import MissionEngine
from tinytownd.missions.scheduler import run_tick
from tinytownd.missions.storage import MissionStore
from tinytownd.missions.tick import TickInput
from tinytownd.missions.validate import validate_mission, validate_work
from tinytownd.store.town import Town
from tinytownd.store.wire import new_id, utcnow
from tests.support.helpers import wait_for  # noqa: F401,E402  (re-exported for the mission tests)

# The 6-item diamond DAG several mission tests run.
DIAMOND = """
objective: diamond
policy: {max_parallel_items: 2, reviewer_required: false, max_attempts: 2}
work_items:
  - {id: a, title: A}
  - {id: b, title: B, depends_on: [a]}
  - {id: c, title: C, depends_on: [a]}
  - {id: d, title: D, depends_on: [a]}
  - {id: e, title: E, depends_on: [b, c]}
  - {id: f, title: F, depends_on: [d, e]}
"""
DIAMOND_ORDER = {"b": "a", "c": "a", "d": "a", "e": "bc", "f": "de"}   # item -> its dependencies

# One item `x` (title X), no review.
ONE_ITEM = """
policy: {reviewer_required: false}
work_items: [{id: x, title: X}]
"""


def with_policy(text: str, **policy) -> str:
    """The mission file `text` with some policy fields replaced (None removes one)."""
    data = yaml.safe_load(text)
    pol = dict(data.get("policy") or {})
    for k, v in policy.items():
        if v is None:
            pol.pop(k, None)
        else:
            pol[k] = v
    data["policy"] = pol
    return yaml.safe_dump(data, sort_keys=False)


def agent_record(name, role=None, state="idle", aid=None) -> dict:
    """An agent as the tick sees it."""
    return {"id": aid or str(uuid.uuid4()), "name": name, "role_id": role, "state": state,
            "last_active_at": ""}


class TickSim:
    """Drives the pure scheduler over in-memory records, like the engine does: each tick's
    output is applied to the records, tasks and bookkeeping, and every record written must pass
    tt's checks."""

    def __init__(self, text=DIAMOND, agents=None):
        self.c = compile_text(text, "<t>")
        self.m = self.c.mission
        self.items = {it.id: it for it in self.c.items}
        self.watches, self.cmd = {}, {w.id: w for w in self.c.cmd_watches}
        self.meta = dict(self.c.meta)
        self.tasks = {}
        self.agents = agents or [agent_record("w1", "worker"), agent_record("w2", "worker")]
        self.controls = []
        self.now = utcnow()
        self.fid = {v: k for k, v in self.c.file_ids.items()}

    def tick(self, results=None):
        self.now += timedelta(seconds=1)
        inp = TickInput(mission=self.m, items=self.items, watches=self.watches,
                        cmd_watches=self.cmd, controls=[c for c in self.controls
                                                        if c.processed_at is None],
                        tasks=self.tasks, agents=self.agents, meta=self.meta, now=self.now,
                        watch_results=results or {})
        out = run_tick(inp)
        self.m = out.mission
        self.meta.update(out.meta_set)
        for k in out.meta_del:
            self.meta.pop(k, None)
        for tid in out.tasks_processed:
            self.tasks.pop(tid, None)
        for nt in out.new_tasks:
            self.tasks[nt.task_id] = {"id": nt.task_id, "state": "assigned", "tags": nt.tags,
                                      "assigned_to": nt.agent, "description": nt.description}
        assert validate_mission(self.m.to_json()) == []
        for it in self.items.values():
            assert validate_work(it.to_json()) == []
        return out

    def live(self):
        return [t for t in self.tasks.values() if t["state"] in ("assigned", "running")]

    def finish(self, tid, state="completed", result="ok"):
        self.tasks[tid]["state"] = state
        self.tasks[tid]["result"] = result


def mission_config(url: str, town: str = "mt", *, ttl: float = 3, sweep: float = 1.0,
                   gh: str = "gh", root: str | None = None):
    return config.from_dict({"town": {"name": town, "root": root or "/tmp"},
                             "redis": {"url": url},
                             "missions": {"lease_ttl_s": ttl, "sweep_interval_s": sweep,
                                          "gh": gh, "gh_timeout_s": 5,
                                          "conductor_help_backoff_s": 3600}},
                            check_files=False, env={})


class EngineHandle:
    def __init__(self, url: str, town: str = "mt", run: bool = True, **kw):
        self.cfg = mission_config(url, town, **kw)
        self.clients = redis_clients.make_clients(self.cfg)
        self.ctx = Context(config=self.cfg, keys=Keys(town), clients=self.clients,
                           instance_id=new_id(), stopping=gevent.event.Event())
        self.engine = MissionEngine(self.ctx)
        self.greenlets = [gevent.spawn(fn) for fn in self.engine.services().values()] \
            if run else []

    def stop(self, release: bool = True):
        self.ctx.stopping.set()
        self.engine.lease_evt.set()
        self.engine.wake_evt.set()
        gevent.joinall(self.greenlets, timeout=5)
        gevent.killall(self.greenlets, timeout=2)
        if release:
            self.engine.close()
        else:
            self.engine.pool.kill(timeout=2)
        self.clients.close()


def hold_lease(engine: MissionEngine, mid: str) -> None:
    """Make `engine` hold the mission's lease, for ticks driven by hand (engine.tick)."""
    from tinytownd.missions.engine import LeaseState
    assert engine.leases.acquire(mid)
    engine.owned[mid] = LeaseState(mid)


class FakeAgent:
    """Plays one agent: takes task_assign messages from its inbox, runs `behave(task)` →
    (state, result, seconds) and finishes the task through Town, like a worker would."""

    def __init__(self, town: Town, name: str, role: str | None = "worker", behave=None,
                 log: list | None = None):
        self.town = town
        self.name = name
        self.aid = town.register_agent(name, role=role, cli="fake")
        town.set_agent_state(self.aid, "idle", event=False)
        self.behave = behave or (lambda t: ("completed", "done", 0.02))
        self.log = log if log is not None else []
        self.running = True
        self.g = gevent.spawn(self.loop)

    def loop(self):
        r, k = self.town.r, self.town.keys
        while self.running:
            try:
                self.step(r, k)
            except (redis.ConnectionError, redis.TimeoutError):
                gevent.sleep(0.05)

    def step(self, r, k):
        raw = r.lpop(k.inbox(self.aid))
        if raw is None:
            gevent.sleep(0.01)
            return
        msg = json.loads(raw)
        if msg.get("type") != "task_assign":
            return
        tid = msg["task_id"]
        task = self.town.get_task(tid) or {}
        if task.get("state") in ("completed", "failed", "cancelled"):
            return
        task["tags"] = records.decode_tags(task.get("tags"))
        self.town.set_agent_state(self.aid, "working", event=False)
        self.town.start_task(tid, self.aid)
        self.log.append(("start", self.name, tid, time.monotonic()))
        state, result, secs = self.behave(task)
        gevent.sleep(secs)
        self.log.append(("end", self.name, tid, time.monotonic()))
        if state == "completed":
            self.town.complete_task(tid, result)
        else:
            self.town.fail_task(tid, result)
        self.town.set_agent_state(self.aid, "idle", event=False, stamp_active=True)

    def pause(self):
        """Stop taking tasks (the agent's record is left as it is)."""
        self.running = False
        self.g.join()

    def resume(self):
        self.running = True
        self.g = gevent.spawn(self.loop)

    def stop(self):
        self.running = False
        self.g.join(timeout=2)
        self.g.kill()


def mission_state(r, keys: Keys, mid: str) -> str | None:
    m = MissionStore(r, keys).get_mission(mid)
    return m.state if m else None


def live_tasks_by_item(r, keys: Keys) -> dict[str, list[str]]:
    """work item id -> live bound task ids, over every task in the town."""
    out: dict[str, list[str]] = {}
    for key in r.scan_iter(match=keys.pattern("task"), count=1000):
        h = r.hmget(key, "id", "state", "tags")
        if not h[0] or h[1] in ("completed", "failed", "cancelled"):
            continue
        tags = records.decode_tags(h[2])
        if "mission-review-task" in tags:
            continue
        w = next((t[10:] for t in tags if t.startswith("work-item:")), None)
        if w:
            out.setdefault(w, []).append(h[0])
    return out


def fake_gh(dir_: Path, prs: dict[str, dict]) -> Path:
    """A `gh` on PATH answering `gh pr view N --repo o/r --json …` from files; logs its calls."""
    dir_.mkdir(parents=True, exist_ok=True)
    data = dir_ / "prs"
    data.mkdir(exist_ok=True)
    for key, val in prs.items():
        (data / key.replace("/", "_").replace("#", "_")).write_text(json.dumps(val))
    script = dir_ / "gh"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {dir_}/calls.log
if [ "$1" = pr ] && [ "$2" = view ]; then
  f="{data}/$(echo "$5" | tr / _)_$3"
  if [ -f "$f" ]; then cat "$f"; exit 0; fi
  echo "no such PR" >&2; exit 1
fi
if [ "$1" = issue ] && [ "$2" = view ]; then
  f="{data}/issue_$(echo "$5" | tr / _)_$3"
  if [ -f "$f" ]; then cat "$f"; exit 0; fi
  echo "no such issue" >&2; exit 1
fi
exit 2
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _engine_main(url: str, town: str, ttl: str) -> None:
    import signal
    from tinytownd import logs
    logs.configure(os.environ.get("TT_ENGINE_LOG_LEVEL", "info"), "/dev/stderr")
    h = EngineHandle(url, town, ttl=float(ttl), sweep=1.0)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    print("ready", h.engine.token, flush=True)
    stop.wait()
    h.stop()


if __name__ == "__main__":
    if sys.argv[1] == "engine":
        _engine_main(*sys.argv[2:5])
