"""Helpers for the mission tests (no tests here): in-process engines, agent doubles that play
agents through the Town API, a fake `gh`, and a standalone engine process for kill -9 tests.

    python -m tests.support.missions engine URL TOWN TTL   # runs one MissionEngine until SIGTERM
"""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import gevent
import gevent.event
import redis

from tinytownd import config
from tinytownd.store import records
from tinytownd.daemon import redis_clients
from tinytownd.daemon.component import Context
from tinytownd.store.keys import Keys
from tinytownd.missions.engine import MissionEngine
from tinytownd.missions.storage import MissionStore
from tinytownd.store.town import Town
from tinytownd.store.wire import new_id
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
        if True:
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
