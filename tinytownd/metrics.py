"""The daemon's own Prometheus instruments: counters and histograms updated in process, at a few
well-defined points (a round's end, a first pickup, a dead letter, a reload), never with Redis.

`/metrics` (tinytownd/http) renders REGISTRY together with what it reads from the town on scrape.
An instrument is one line below; updating it is one line at its call site, label values in the
order declared, the number first where there is one:

    metrics.ROUNDS.inc("claude", "ok")
    metrics.ROUND_SECONDS.observe(12.5, "claude", "ok")

Label children are cached per tuple of values (one dict lookup per update, no lock beyond
prometheus_client's own), so the hot path stays at a few microseconds per round.
"""
from __future__ import annotations

import collections
import time
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client import PlatformCollector, ProcessCollector

disable_created_metrics()                  # no *_created samples: half the text, no value
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)        # process_cpu_seconds_total, resident memory, fds
PlatformCollector(registry=REGISTRY)       # python_info

ROUND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
                 1800, 3600)
PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Family:
    """A labelled prometheus_client metric with its children cached by label values."""

    kind = None

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (), **kw):
        self.metric = self.kind(name, doc, labels, registry=REGISTRY, **kw)
        self.labelled = bool(labels)
        self._children: dict[tuple, object] = {}

    def child(self, *values: str):
        c = self._children.get(values)
        if c is None:
            c = self.metric.labels(*values) if self.labelled else self.metric
            self._children[values] = c
        return c


class Counter(_Family):
    kind = _Counter

    def inc(self, *values: str) -> None:
        self.child(*values).inc()

    def add(self, amount: float, *values: str) -> None:
        self.child(*values).inc(amount)


class Gauge(_Family):
    kind = _Gauge

    def set(self, value: float, *values: str) -> None:
        self.child(*values).set(value)


class Histogram(_Family):
    kind = _Histogram

    def observe(self, value: float, *values: str) -> None:
        self.child(*values).observe(value)


# --- rounds (runtime/round.py) ---------------------------------------------------------------
ROUND_SECONDS = Histogram("tinytownd_round_duration_seconds",
                          "Duration of agent CLI rounds, by CLI and outcome",
                          ("cli", "outcome"), buckets=ROUND_BUCKETS)
ROUNDS = Counter("tinytownd_rounds_total", "Agent CLI rounds by how they ended (ok, retry, "
                 "failed, cli_finished, interrupted, deferred)", ("cli", "outcome"))
RETRIES = Counter("tinytownd_retries_total", "Failed rounds whose task is tried again, by "
                  "failure class (timeout, error, rate_limited, ... as the agent CLI report "
                  "classes them)", ("cli", "class"))
FAILURES = Counter("tinytownd_failures_total", "Tasks failed for good after their attempts (or "
                   "failed rounds without a task), by failure class", ("cli", "class"))
PICKUP_SECONDS = Histogram("tinytownd_pickup_latency_seconds",
                           "From a task's assignment to the start of its first round",
                           ("cli",), buckets=PICKUP_BUCKETS)
# --- the rest of the daemon -------------------------------------------------------------------
RELOADS = Counter("tinytownd_reloads_total", "Config reloads by result (ok, invalid_config, "
                  "apply_failed)", ("result",))
HTTP_REQUESTS = Counter("tinytownd_http_requests_total", "HTTP requests by route and status code",
                        ("route", "code"))
# --- what agent CLIs report (round_end below); the CLIs' cooldowns are read from Redis on scrape
#     (tinytownd_cli_cooldowns_active, http/collectors.py): they are the town's, not this daemon's
TOKENS = Counter("tinytownd_tokens_total", "Tokens agent CLIs reported, by CLI and kind (input, "
                 "output, ...)", ("cli", "kind"))
COST = Counter("tinytownd_cost_usd_total", "Cost agent CLIs reported, in US dollars", ("cli",))

# Round ends by outcome since the start, and per THROUGHPUT_BUCKET_S for the dashboard's
# throughput over the last minutes (THROUGHPUT_BUCKETS kept).
TALLY: collections.Counter = collections.Counter()
THROUGHPUT_BUCKET_S = 10
THROUGHPUT_BUCKETS = 60
_BUCKETS: "collections.OrderedDict[int, collections.Counter]" = collections.OrderedDict()


def _bucket(now: float) -> collections.Counter:
    b = int(now // THROUGHPUT_BUCKET_S)
    c = _BUCKETS.get(b)
    if c is None:
        c = _BUCKETS[b] = collections.Counter()
        while len(_BUCKETS) > THROUGHPUT_BUCKETS:
            _BUCKETS.popitem(last=False)
    return c


def throughput(now: float) -> dict:
    """Round ends per bucket over the last THROUGHPUT_BUCKETS buckets, oldest first."""
    last = int(now // THROUGHPUT_BUCKET_S)
    first = last - THROUGHPUT_BUCKETS + 1
    rows = [{"t": b * THROUGHPUT_BUCKET_S, **_BUCKETS.get(b, {})} for b in range(first, last + 1)]
    return {"bucket_s": THROUGHPUT_BUCKET_S, "buckets": rows, "totals": dict(TALLY)}


def round_end(cli: str, outcome: str, seconds: float, failure_class: str,
              usage: dict | None = None) -> None:
    """A round ended (outcome.py's kinds); `failure_class` matters for retry and failed;
    `usage`: what the agent CLI reported (`*_tokens`, `cost_usd`), added to TOKENS and COST."""
    for key, value in (usage or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            continue
        if key.endswith("_tokens"):
            TOKENS.add(value, cli, key[:-len("_tokens")])
        elif key == "cost_usd":
            COST.add(value, cli)
    ROUNDS.inc(cli, outcome)
    ROUND_SECONDS.observe(seconds, cli, outcome)
    TALLY[outcome] += 1
    _bucket(time.time())[outcome] += 1
    if outcome == "retry":
        RETRIES.inc(cli, failure_class)
    elif outcome == "failed":
        FAILURES.inc(cli, failure_class)


def pickup(cli: str, assigned_at: str | None, now: float) -> None:
    """The first round of a task started at `now` (time.time()); `assigned_at` is its
    task_assign message's created_at (RFC 3339). Unreadable timestamps are skipped."""
    if not assigned_at:
        return
    try:
        t = datetime.fromisoformat(assigned_at)
    except ValueError:
        return
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    PICKUP_SECONDS.observe(max(0.0, now - t.timestamp()), cli)
