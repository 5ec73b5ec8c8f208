"""The Prometheus collector of what is read on scrape: townhall's gauges (same names, same
meaning, so existing dashboards keep working) and the daemon's supervision counters.

A scrape while Redis is down answers `tinytown_up 1`, `tinytown_ready 0` and the daemon's own
metrics, never an error.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

SCRAPE_BUDGET_S = 1.0


class TownCollector:
    def __init__(self, listener):
        self.listener = listener            # server.HttpListener: daemon, view, readiness

    def describe(self):
        return []                           # collected on scrape only (no registration probe)

    def collect(self):
        li = self.listener
        d = li.daemon
        yield GaugeMetricFamily("tinytown_up", "Whether the tinytownd process is running.",
                                value=1)
        view, error = li.town_view(SCRAPE_BUDGET_S, counts_only=True)
        # the view's PING just answered (or not): no second probe
        ready, _failing = li.readiness(view_error=error, redis_probe={"reachable": True})
        yield GaugeMetricFamily("tinytown_ready", "Whether tinytownd is ready (Redis answers, "
                                "every service runs, the mission dispatcher is not stalled).",
                                value=1 if ready else 0)
        if view is not None:
            yield from self._town(view)
        yield from self._daemon(d)

    def _town(self, v: dict):
        states = GaugeMetricFamily("tinytown_agents_total", "Number of registered agents by "
                                   "state.", labels=["state"])
        counts: dict[str, int] = {}
        for a in v["agents"]:
            s = a.get("state") or "unknown"
            counts[s] = counts.get(s, 0) + 1
        for s in sorted(counts):
            states.add_metric([s], counts[s])
        yield states
        assigned = sum(a.get("assigned_pending", 0) for a in v["agents"])
        yield GaugeMetricFamily("tinytown_tasks_pending", "Number of queued tasks across backlog "
                                "and agent inboxes.", value=v["backlog"] + assigned)
        yield CounterMetricFamily("tinytown_tasks_completed", "Total completed tasks persisted "
                                  "in town state.", value=v["tasks_by_state"].get("completed", 0))
        yield GaugeMetricFamily("tinytown_missions_active", "Number of active missions.",
                                value=v["missions_active"])
        yield GaugeMetricFamily("tinytown_redis_latency_seconds", "Redis round-trip latency for "
                                "this scrape.", value=v["redis_latency_s"])
        yield GaugeMetricFamily("tinytown_backlog_tasks", "Tasks currently in the global "
                                "backlog.", value=v["backlog"])
        yield GaugeMetricFamily("tinytown_tasks_assigned_pending", "Pending assigned tasks "
                                "across all agents.", value=assigned)
        yield GaugeMetricFamily("tinytown_urgent_messages", "Urgent inbox messages across all "
                                "agents.", value=sum(a.get("urgent", 0) for a in v["agents"]))
        tasks = GaugeMetricFamily("tinytownd_tasks", "Tasks of the town by state (from the "
                                  "latest key scan).", labels=["state"])
        for s in sorted(v["tasks_by_state"]):
            tasks.add_metric([s], v["tasks_by_state"][s])
        yield tasks
        yield GaugeMetricFamily("tinytownd_deadletter_messages", "Entries in the dead-letter "
                                "list.", value=v["deadletter"])
        yield CounterMetricFamily("tinytownd_deadlettered", "Entries ever added to the town's "
                                  "dead-letter list, by any daemon (Python and Lua).",
                                  value=v["deadlettered_total"])
        cooling = GaugeMetricFamily("tinytownd_cli_cooldowns_active", "Agents waiting out a "
                                    "cooldown of their CLI (a rate limit), by CLI.",
                                    labels=["cli"])
        for c, n in sorted(v.get("cooldowns", {}).items()):
            cooling.add_metric([c], n)
        yield cooling
        yield GaugeMetricFamily("tinytownd_inbox_messages", "Messages waiting in agent inboxes.",
                                value=sum(a.get("inbox", 0) for a in v["agents"]))

    def _daemon(self, d):
        if d.redis is not None:
            yield CounterMetricFamily("tinytownd_redis_child_restarts", "Restarts of the "
                                      "redis-server the daemon owns.", value=d.redis.restarts)
        svc = CounterMetricFamily("tinytownd_service_restarts", "Restarts of the daemon's "
                                  "supervised services, by service.", labels=["service"])
        up = GaugeMetricFamily("tinytownd_service_running", "1 when the service runs.",
                               labels=["service"])
        for name, s in sorted(d.supervisor.services.items()):
            svc.add_metric([name], s.restarts)
            up.add_metric([name], 1 if s.state == "running" else 0)
        yield svc
        yield up
