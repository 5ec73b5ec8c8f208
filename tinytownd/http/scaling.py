"""/api/scaling: townhall's autoscaling signal, same fields, same meaning, so a KEDA (or other)
scaler set up for townhall works against tinytownd. Pure: `signal(view)` from a town view.

    pending_tasks    backlog + task messages waiting in agent inboxes
    in_flight_tasks  tasks running (state running, or the current task of an active agent)
    queue_depth      pending_tasks + in_flight_tasks
    active_agents    agents in starting, idle, working, paused or draining
    cold_agents      agents in state cold
    desired_agents   min(pending + in flight, max_agents)
    scaling_recommendation  scale_to_zero: nothing pending or running and every active agent idle
                     for idle_timeout_s; scale_up: desired > active; scale_down: desired < active
                     and nothing pending; else steady
"""
from __future__ import annotations

from datetime import datetime, timezone

ACTIVE_STATES = frozenset({"starting", "idle", "working", "paused", "draining"})
MAX_AGENTS = 10            # townhall's default `max_agents`
IDLE_TIMEOUT_S = 300       # townhall's default `agent.idle_timeout_secs`


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def in_flight(agents: list[dict], running_task_ids: set[str]) -> int:
    ids = set(running_task_ids)
    for a in agents:
        if a.get("state") in ACTIVE_STATES and a.get("current_task"):
            ids.add(a["current_task"])
    return len(ids)


def recommendation(*, agents: list[dict], pending: int, inflight: int, desired: int,
                   active: int, now: float, idle_timeout_s: float) -> str:
    if idle_timeout_s == 0:
        all_idle = active == 0
    else:
        all_idle = True
        for a in agents:
            if a.get("state") not in ACTIVE_STATES:
                continue
            last = _ts(a.get("last_active_at"))
            if a.get("state") != "idle" or last is None or now - last < idle_timeout_s:
                all_idle = False
                break
    if desired == 0 and pending == 0 and inflight == 0 and all_idle:
        return "scale_to_zero"
    if desired > active:
        return "scale_up"
    if desired < active and pending == 0:
        return "scale_down"
    return "steady"


def signal(*, town: str, agents: list[dict], backlog: int, assigned_pending: int,
           running_task_ids: set[str], now: float, max_agents: int = MAX_AGENTS,
           idle_timeout_s: float = IDLE_TIMEOUT_S) -> dict:
    pending = backlog + assigned_pending
    inflight = in_flight(agents, running_task_ids)
    active = sum(1 for a in agents if a.get("state") in ACTIVE_STATES)
    cold = sum(1 for a in agents if a.get("state") == "cold")
    desired = min(pending + inflight, max_agents)
    return {"town": town,
            "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z"),
            "queue_depth": pending + inflight, "pending_tasks": pending,
            "in_flight_tasks": inflight, "active_agents": active, "cold_agents": cold,
            "desired_agents": desired, "max_agents": max_agents,
            "scaling_recommendation": recommendation(
                agents=agents, pending=pending, inflight=inflight, desired=desired,
                active=active, now=now, idle_timeout_s=idle_timeout_s)}
