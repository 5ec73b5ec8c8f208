"""Redis commands per task, counted by the server (INFO commandstats, which counts the commands
scripts run too): an embedded task batch with the default config stays at ≤ 25 per task, and each
runtime.task_events setting writes exactly its events. A count of commands, never a timing."""
from __future__ import annotations

import dataclasses
import json

import gevent
import pytest

from tests.support.helpers import wait_for
from tinytownd.batch.agents import agent_sections, embedded_config, roster, uses_workspaces
from tinytownd.batch.dispatch import DispatchedBatch
from tinytownd.batch.file import parse
from tinytownd.config import schema
from tinytownd.daemon.lifecycle import Daemon

TASKS = 200         # (lifecycle: 4 town events per task stay under the stream's MAXLEN ~ 1000)
AGENTS = 4
MAX_PER_TASK = 25


def _run(root, task_events: str | None, n: int = TASKS, agents_n: int = AGENTS):
    """Run a TASKS-task batch of `true` on an embedded daemon; (commandstats calls per task by
    command, the town's redis client, the task ids) with the daemon still running."""
    bf = parse({"tasks": [{"id": f"t{i}", "description": "noop"} for i in range(n)]}, "gen")
    clis, agents = agent_sections(bf, agents=agents_n, cli="true")
    cfg = embedded_config(bf, root, clis, agents)
    if task_events is not None:
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                  task_events=task_events))
    d = Daemon(cfg, install_signals=False)
    d.start()
    g = gevent.spawn(d.run)
    r = d.ctx.clients.cmd
    batch = DispatchedBatch(bf, "cc", r, d.ctx.keys, roster=roster(cfg),
                            link_meta=uses_workspaces(cfg))
    batch.town.task_events = cfg.runtime.task_events
    try:
        batch.wait_agents()
        wait_for(lambda: all(r.hget(d.ctx.keys.agent(a), "state") == "idle"
                             for a in batch.agent_words), what="agents idle")
        r.config_resetstat()
        batch.subscribe()
        batch.write_meta()
        batch.submit()
        batch.start_dispatch(fresh=True)
        assert batch.follow()
        stats = r.info("commandstats")
        per = {k.replace("cmdstat_", ""): v["calls"] / n for k, v in stats.items()}
        streams = {key: [json.loads(f["data"])["event_type"] for _i, f in r.xrange(key)]
                   for key in (d.ctx.keys.events,)}
        tids = list(batch.ids.values())
        tasks = [r.hgetall(d.ctx.keys.task(t)) for t in tids]
        agents_h = [r.hgetall(d.ctx.keys.agent(a)) for a in batch.agent_words]
        return per, streams[d.ctx.keys.events], tasks, agents_h
    finally:
        batch.close()
        d.request_stop(graceful=True)
        g.join(30)


def test_default_config_costs_at_most_25_commands_per_task(tmpdir_short):
    assert schema.RuntimeSection().task_events == "none"
    # (8 agents, 600 tasks: as the benchmark runs it; start-up and idle parks spread thinner)
    per, events, tasks, agents = _run(tmpdir_short / "town", None, 600, 8)
    total = sum(per.values())
    assert total <= MAX_PER_TASK, f"{total:.1f} commands per task: {per}"
    assert "xadd" not in per                          # no per-task events by default
    # the work was done, and tt's records show it
    assert all(t["state"] == "completed" and t["result"] for t in tasks)
    assert sum(int(a["tasks_completed"]) for a in agents) == len(tasks) == 600
    assert sum(int(a["rounds_completed"]) for a in agents) == 600
    assert not any("current_task" in a for a in agents)
    assert "task_completed" not in events and "task_assigned" not in events


@pytest.mark.parametrize("mode,xadds", [("terminal", 2), ("lifecycle", 8)])
def test_each_task_events_setting_writes_its_events(tmpdir_short, mode, xadds):
    """terminal: task_completed on the town and agent streams (2 XADDs per task); lifecycle:
    also task_assigned and the agent's Idle -> Working -> Idle per round (8)."""
    per, events, tasks, _agents = _run(tmpdir_short / "town", mode)
    assert per["xadd"] == xadds
    # the rest costs what the default does (give or take a few more idle parks: XADDs are slow)
    assert sum(per.values()) - per["xadd"] <= MAX_PER_TASK + 2
    assert events.count("task_completed") == TASKS
    assert events.count("task_assigned") == (TASKS if mode == "lifecycle" else 0)
