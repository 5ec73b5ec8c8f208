"""Noticing that the town's primary changed — a Sentinel failover, or a Redis restart — and what
every daemon does then: re-validate its leases before anyone takes a free one.

The `redis.watch` service asks every POLL_S: with Sentinels, where the primary is (the Sentinels'
answer); otherwise the server's run_id (INFO server, on the command pool). A change
  * is logged once (from → to) and counted (status: `failovers`, `primary`, `changed_ago_s`);
  * points the pools at the new primary and closes every connection to the old one, idle or in
    use (the old one may take writes for seconds more, into a copy that is thrown away);
  * calls the listeners: the runtime renews every agent lease it holds at once (one lost with
    the old primary is taken back; one another daemon holds stops that agent) and hands back
    its kept script connections; the mission engine renews its mission leases;
  * holds new lease acquisitions (agents, missions) for `hold_s()`: every daemon that still runs
    an agent or a mission re-asserts its lease within that time, so a lease write that died
    with the old primary never lets a second daemon start the same agent or mission.
A Redis that does not answer is not a change (the daemon waits for it: store/refusals.Patience).
"""
from __future__ import annotations

import time
from typing import Callable

import gevent
import redis

POLL_S = 0.5
IDENTITY_TIMEOUT_S = 0.9     # one identity query (under the smallest watchdog stall window/1)


class PrimaryWatch:
    def __init__(self, config: Callable, clients, log, stopping,
                 progress: Callable[[], None] = lambda: None,
                 primary: tuple[str, int] | None = None):
        self.config = config                 # the live Config
        self.clients = clients
        self.stopping = stopping
        self.log = log
        self.progress = progress
        self.listeners: list[Callable[[], None]] = []
        self.identity: object = primary     # (host, port) with Sentinels, else a run_id
        self.failovers = 0
        self.changed_at: float | None = None    # time.monotonic() of the last change
        self.unreachable_since: float | None = None
        self.unreachable_last: float | None = None    # time.monotonic() of the last failure
        self.last_error: str | None = None
        self.pools: list = []                # extra pools to point at a new primary

    @property
    def sentinel(self) -> bool:
        return self.config().sentinel is not None

    @property
    def primary(self) -> tuple[str, int] | None:
        return self.identity if self.sentinel else None

    def redis_trouble_within(self, window_s: float) -> bool:
        """Redis does not answer now, or did not within the last `window_s` seconds."""
        return self.unreachable_since is not None or (
            self.unreachable_last is not None
            and time.monotonic() - self.unreachable_last < window_s)

    def listen(self, fn: Callable[[], None]) -> None:
        self.listeners.append(fn)

    def hold_s(self) -> float:
        """How long acquisitions wait after a change: long enough for every owner to notice it
        (a poll) and to re-assert its leases (its heartbeat), twice over."""
        hb = self.config().runtime.heartbeat_interval_s
        return max(2.0, 2 * POLL_S + 2 * hb)

    def holding(self) -> bool:
        """True while new lease acquisitions should wait: just after a change, and while the
        pools already talk to a primary this watch has not yet seen (they re-resolve on their
        own when a connection breaks, up to POLL_S before the watch notices)."""
        if self.changed_at is not None and time.monotonic() - self.changed_at < self.hold_s():
            return True
        if self.sentinel and self.identity is not None:
            for pool in self._pools():
                addr = getattr(pool, "master_address", None)
                if addr is not None and tuple(addr) != tuple(self.identity):
                    return True
        return False

    # ------------------------------------------------------------------ the service
    def run(self) -> None:
        stopping = self.stopping
        while not stopping.is_set():
            try:
                ident = self._identity()
            except (redis.RedisError, OSError) as e:
                now = time.monotonic()
                if self.unreachable_since is None:
                    self.unreachable_since = now
                    self.log.warning("redis unreachable; waiting for it",
                                     error=f"{type(e).__name__}: {e}"[:300])
                self.unreachable_last = now
                self.last_error = f"{type(e).__name__}: {e}"[:300]
            else:
                if self.unreachable_since is not None:
                    self.log.info("redis answers again", down_s=round(
                        time.monotonic() - self.unreachable_since, 3))
                self.unreachable_since, self.last_error = None, None
                if ident != self.identity:
                    if self.identity is not None:
                        self._changed(self.identity, ident)
                    self.identity = ident
            self.progress()
            stopping.wait(POLL_S)

    def _identity(self):
        cfg = self.config()
        # bounded well under the watchdog's stall window: this service's progress is what
        # tells a Redis outage from a wedged daemon
        if cfg.sentinel is not None:
            from . import redis_ha
            with gevent.Timeout(IDENTITY_TIMEOUT_S, redis.TimeoutError(
                    f"no Sentinel answered within {IDENTITY_TIMEOUT_S} s")):
                return tuple(redis_ha.manager(cfg).discover_master(cfg.sentinel.master))
        with gevent.Timeout(IDENTITY_TIMEOUT_S, redis.TimeoutError(
                f"no answer to INFO within {IDENTITY_TIMEOUT_S} s")):
            return self._probe().info("server").get("run_id")

    def _probe(self):
        """A client of its own for INFO (no retries: the pool's would outlast the timeout)."""
        url = self.clients.url
        if getattr(self, "_probe_url", None) != url:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            from .redis_clients import _tls_kwargs
            self._probe_client = redis.Redis.from_url(
                url, socket_timeout=IDENTITY_TIMEOUT_S, socket_connect_timeout=IDENTITY_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0), max_connections=2, health_check_interval=0,
                **_tls_kwargs(self.config(), url))
            self._probe_url = url
        return self._probe_client

    def _changed(self, old, new) -> None:
        self.failovers += 1
        self.changed_at = time.monotonic()
        what = "failover: the primary moved" if self.sentinel else "Redis restarted"
        self.log.warning(f"{what}; re-validating leases, new acquisitions held",
                         old=_show(old), new=_show(new), failovers=self.failovers,
                         hold_s=self.hold_s())
        if self.sentinel:
            from tinytownd.config import redact_url
            self.clients.url = self._url(new)
            self.clients.redacted = redact_url(self.clients.url)
            dropped = 0
            for pool in self._pools():
                try:
                    pool.get_master_address()   # closes idle connections to the old one
                except (redis.RedisError, OSError):
                    pass
                drop = getattr(pool, "drop_others", None)   # and those in use (redis_ha)
                if drop is not None:
                    dropped += drop(new)
            self.log.info("connections to the former primary closed", count=dropped)
        for fn in self.listeners:
            gevent.spawn(self._call, fn)

    def _pools(self):
        seen = []
        for p in [self.clients.cmd.connection_pool, self.clients.block.connection_pool,
                  *self.pools]:
            if hasattr(p, "get_master_address") and p not in seen:
                seen.append(p)
        return seen

    def _url(self, addr) -> str:
        from . import redis_ha
        return redis_ha.primary_url(self.config(), addr)

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception as e:   # a listener's own loop retries; never the watch's problem
            self.log.warning("failover listener failed", listener=getattr(fn, "__qualname__",
                                                                          str(fn)),
                             error=f"{type(e).__name__}: {e}"[:300])

    def status(self) -> dict:
        now = time.monotonic()
        out = {"failovers": self.failovers,
               "changed_ago_s": None if self.changed_at is None
               else round(now - self.changed_at, 3),
               "acquisitions_held": self.holding()}
        if self.sentinel:
            out["primary"] = _show(self.identity)
        if self.unreachable_since is not None:
            out["watch_error"] = self.last_error
            out["unreachable_s"] = round(now - self.unreachable_since, 3)
        return out


def _show(ident) -> str | None:
    if isinstance(ident, tuple):
        return f"{ident[0]}:{ident[1]}"
    return ident
