"""Operator control of one agent: interrupt, resume, close, kill — each action in one place.

An action is what it writes into the town (the same keys and values as tt's `interrupt`,
`resume`, `close` and `kill`, so tt and tinytownd can control each other's agents) and how the
daemon that runs the agent reacts. The runtime reads the agent's stop flag and state with every
heartbeat and applies `reaction`; the worker loop's round take (lua/take_round.lua) honours the
stop flag and the paused / stopped states on its own.

  interrupt  state `paused`. A running round finishes; no new round starts; a parked agent is
             woken so that it notices at once.
  resume     state `idle`, stop flag cleared (a stopped agent is started again by the runtime,
             where tt needs `tt restart`).
  close      state `draining` + stop flag: the running round finishes, then the agent stops.
  kill       state `stopped` + stop flag: the running CLI is killed now (its task is requeued,
             not counted as an attempt), then the agent stops.
"""
from __future__ import annotations

from . import events
from .wire import AGENT_TERMINAL, hash_ts

STOP_FLAG_TTL_S = 3600


def interrupt(town, aid: str) -> str:
    """paused (refused for terminal agents). Returns the old state."""
    old = town.agent_state(aid)
    if old in AGENT_TERMINAL:
        raise ValueError(f"agent is {old}; cannot interrupt")
    p = town.r.pipeline(transaction=True)
    p.hset(town.keys.agent(aid), "state", "paused")
    town.log_activity(aid, "⏸️ Interrupted (paused)", pipe=p)
    events.queue(p, town.keys, events.agent_interrupted(aid, old))
    p.execute()
    return old


def resume(town, aid: str) -> str:
    """paused or stopped → idle, stop flag cleared. Returns the old state."""
    old = town.agent_state(aid)
    if old not in ("paused", "stopped"):
        raise ValueError(f"agent is {old}; only a paused or stopped agent can be resumed")
    p = town.r.pipeline(transaction=True)
    p.hset(town.keys.agent(aid), mapping={"state": "idle", "last_heartbeat": hash_ts()})
    p.delete(town.keys.stop(aid))
    town.log_activity(aid, "▶️ Resumed", pipe=p)
    events.queue(p, town.keys, events.agent_resumed(aid, old))
    p.execute()
    return old


def close(town, aid: str) -> str:
    """draining + stop flag. Returns the old state."""
    old = town.agent_state(aid)
    if old in AGENT_TERMINAL:
        raise ValueError(f"agent is {old}; cannot close")
    p = town.r.pipeline(transaction=True)
    p.hset(town.keys.agent(aid), "state", "draining")
    p.set(town.keys.stop(aid), "1", ex=STOP_FLAG_TTL_S)
    town.log_activity(aid, "🔻 Closing (draining then stop)", pipe=p)
    events.queue(p, town.keys, events.agent_stopped(aid, "Agent closing (draining then stop)",
                                                    old=old, new="draining"))
    p.execute()
    return old


def kill(town, aid: str) -> str:
    """stopped + stop flag at once. Returns the old state."""
    old = town.agent_state(aid)
    p = town.r.pipeline(transaction=True)
    p.set(town.keys.stop(aid), "1", ex=STOP_FLAG_TTL_S)
    p.hset(town.keys.agent(aid), mapping={"state": "stopped", "last_heartbeat": hash_ts()})
    town.log_activity(aid, "🛑 Stop requested", pipe=p)
    events.queue(p, town.keys, events.agent_state_changed(aid, old, "stopped", "Agent killed"))
    p.execute()
    return old


ACTIONS = {"interrupt": interrupt, "resume": resume, "close": close, "kill": kill}


def reaction(*, running_cli: bool, parked: bool, stop_flag: bool, state: str | None,
             urgent: int, leaving: bool) -> str | None:
    """What the runtime does for one agent it runs, from one heartbeat's reading:
    "kill" the running CLI (a `kill`), "wake" a parked agent that has something to notice (a
    stop flag, a pause, a close, urgent mail, or the daemon wants it to leave), or nothing."""
    if running_cli and stop_flag and state == "stopped":
        return "kill"
    if parked and (stop_flag or state in ("paused", "stopped", "draining") or urgent > 0
                   or leaving):
        return "wake"
    return None
