"""Named services (greenlets) under supervision, huey/gunicorn style.

Each service is a function that loops until the daemon's `stopping` event is set. The supervisor runs
it in a greenlet; if it raises (or returns while the daemon is not stopping), the crash is logged with
the traceback as structured fields and the service is started again after an exponential backoff
(reset once it has run for a while). State per service, for `status`:

    running     the loop runs
    restarting  it crashed and waits for its backoff
    failed      it crashed again and again (>= FAILED_AFTER times in a row); still retried at the
                maximum backoff
    stopped     it returned because the daemon is stopping, or it was killed at shutdown

Loops call `progress(name)` as they make headway; `stalled()` lists running services that reported
progress once but not within the last N seconds, which withholds the systemd watchdog ping.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import gevent
from gevent.event import Event

FAILED_AFTER = 5
STABLE_AFTER_S = 30.0


@dataclass
class Service:
    name: str
    fn: Callable[[], None]
    state: str = "starting"
    restarts: int = 0
    consecutive: int = 0
    last_error: str | None = None
    last_progress: float | None = None   # time.monotonic()
    greenlet: gevent.Greenlet | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, log, stopping: Event, *, backoff_initial: float = 0.1,
                 backoff_max: float = 30.0):
        self.log = log
        self.stopping = stopping
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.services: dict[str, Service] = {}

    def add(self, name: str, fn: Callable[[], None], *, start: bool = False) -> None:
        if name in self.services:
            raise ValueError(f"service {name!r} is already registered")
        self.services[name] = Service(name, fn)
        if start:
            self._spawn(self.services[name])

    def start(self) -> None:
        for svc in self.services.values():
            if svc.greenlet is None:
                self._spawn(svc)

    def _spawn(self, svc: Service) -> None:
        svc.greenlet = gevent.spawn(self._run, svc)
        svc.greenlet.name = f"service:{svc.name}"

    def _run(self, svc: Service) -> None:
        log = self.log.bind(service=svc.name)
        while True:
            svc.state = "running"
            started = time.monotonic()
            try:
                svc.fn()
            except gevent.GreenletExit:
                svc.state = "stopped"
                raise
            except Exception as e:
                if self.stopping.is_set():
                    log.warning("service failed while stopping", exc_info=True)
                    svc.state, svc.last_error = "stopped", f"{type(e).__name__}: {e}"
                    return
                svc.last_error = f"{type(e).__name__}: {e}"
                log.error("service crashed", exc_info=True, restarts=svc.restarts)
            else:
                if self.stopping.is_set():
                    svc.state = "stopped"
                    return
                svc.last_error = "returned while the daemon was running"
                log.error("service returned unexpectedly", restarts=svc.restarts)
            if time.monotonic() - started >= STABLE_AFTER_S:
                svc.consecutive = 0
            svc.consecutive += 1
            svc.restarts += 1
            svc.state = "failed" if svc.consecutive >= FAILED_AFTER else "restarting"
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (svc.consecutive - 1))
            if self.stopping.wait(delay):
                svc.state = "stopped"
                return
            log.info("service restarting", after_s=round(delay, 3), restarts=svc.restarts)

    # --- watchdog ------------------------------------------------------------------------
    def progress(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is not None:
            svc.last_progress = time.monotonic()

    def stalled(self, max_age_s: float) -> list[str]:
        now = time.monotonic()
        return [s.name for s in self.services.values()
                if s.state == "running" and s.last_progress is not None
                and now - s.last_progress > max_age_s]

    # --- status / shutdown ---------------------------------------------------------------
    def states(self) -> dict[str, str]:
        return {name: s.state for name, s in self.services.items()}

    def details(self) -> dict[str, dict]:
        now = time.monotonic()
        return {name: {"state": s.state, "restarts": s.restarts, "last_error": s.last_error,
                       "progress_age_s": None if s.last_progress is None
                       else round(now - s.last_progress, 3)}
                for name, s in self.services.items()}

    def _pick(self, names) -> list[Service]:
        return [s for n, s in self.services.items() if names is None or n in names]

    def join(self, timeout: float | None, names=None) -> bool:
        """Wait for the services to return (they watch `stopping`). True if all did."""
        greenlets = [s.greenlet for s in self._pick(names) if s.greenlet is not None]
        done = gevent.joinall(greenlets, timeout=timeout)
        return len(done) == len(greenlets)

    def kill(self, timeout: float = 2.0, names=None) -> None:
        picked = self._pick(names)
        greenlets = [s.greenlet for s in picked if s.greenlet is not None and not s.greenlet.dead]
        if greenlets:
            gevent.killall(greenlets, block=True, timeout=timeout)
        for s in picked:
            if s.state in ("running", "restarting", "failed", "starting"):
                s.state = "stopped"
