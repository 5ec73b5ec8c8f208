"""The daemon's status document (`tinytownd status --json`, the control socket's `status`).

It answers from the daemon's own state, within STATUS_BUDGET_S, whatever Redis does:
* Redis is probed with one PING on a connection of its own (short socket timeouts, no retries,
  under a gevent.Timeout): `redis.reachable`, `ping_ms`, `error`, `last_ok_ago_s`.
* Each component's status() runs in a greenlet of its own, at most one per component at a time.
  What is not back by the deadline is answered with the component's last status, marked
  `"stale": true` with its age; the greenlet carries on and refreshes that cache when it is done.
"""
from __future__ import annotations

import os
import time
import weakref

import gevent

from tinytownd import __version__, logs
from tinytownd.config import redact_url

STATUS_BUDGET_S = 0.5        # the whole answer
FIRST_ANSWER_S = 0.9         # ... unless a component has never answered yet (no cache to show)
REDIS_PROBE_TIMEOUT_S = 0.3  # connect / AUTH / PING of the probe, each and in all


class _State:
    """What status remembers between two requests (one per daemon)."""

    def __init__(self):
        self.probe = None                 # (url, redis.Redis)
        self.redis_last_ok: float | None = None
        self.components: dict[str, tuple[dict, float]] = {}   # name -> (status, monotonic)
        self.inflight: dict[str, gevent.Greenlet] = {}


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _state(d) -> _State:
    st = _STATES.get(d)
    if st is None:
        st = _STATES[d] = _State()
    return st


# ----------------------------------------------------------------------------- redis
def _probe_client(d, st: _State):
    url = d.clients.url
    if st.probe is None or st.probe[0] != url:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from .redis_clients import _tls_kwargs

        if st.probe is not None:
            st.probe[1].close()
        client = redis.Redis.from_url(url, socket_timeout=REDIS_PROBE_TIMEOUT_S,
                                      socket_connect_timeout=REDIS_PROBE_TIMEOUT_S,
                                      retry=Retry(NoBackoff(), 0), max_connections=8,
                                      health_check_interval=0, **_tls_kwargs(d.cfg, url))
        st.probe = (url, client)
    return st.probe[1]


def probe_redis(d, st: _State) -> dict:
    """One PING, bounded: {reachable, ping_ms | error, last_ok_ago_s}."""
    if d.clients is None:
        return {"reachable": None}
    t0 = time.monotonic()
    out: dict = {}
    try:
        with gevent.Timeout(REDIS_PROBE_TIMEOUT_S):
            _probe_client(d, st).ping()
        st.redis_last_ok = time.monotonic()
        out.update(reachable=True, ping_ms=round((st.redis_last_ok - t0) * 1000, 2))
    except gevent.Timeout:
        out.update(reachable=False, error=f"no answer to PING within {REDIS_PROBE_TIMEOUT_S}s")
    except Exception as e:   # ConnectionError, TimeoutError, AuthenticationError, OSError, ...
        out.update(reachable=False, error=f"{type(e).__name__}: {e}")
    if not out["reachable"]:
        out["last_ok_ago_s"] = (round(time.monotonic() - st.redis_last_ok, 3)
                                if st.redis_last_ok is not None else None)
    return out


def redis_status(d, probe: dict | None = None) -> dict:
    cfg = d.cfg
    if d.redis is not None:
        st = d.redis.status()
    elif cfg.sentinel is not None:
        st = {"mode": "sentinel", "master": cfg.sentinel.master, "nodes": list(cfg.sentinel.nodes),
              "url": d.clients.redacted if d.clients is not None else None,
              "ready": d.redis_version is not None, "version": d.redis_version}
    elif cfg.owned_redis:   # still starting
        st = {"mode": "owned", "pid": None, "ready": False, "version": None}
    else:
        st = {"mode": "external", "url": redact_url(cfg.redis.url),
              "ready": d.redis_version is not None, "version": d.redis_version}
    if getattr(d, "watch", None) is not None:
        st.update(d.watch.status())          # failovers, the primary, acquisitions held
    if probe is not None:
        st.update(probe)
        if probe.get("reachable") is False:
            st["ready"] = False
    return st


def readiness(d, probe: dict | None = None) -> dict:
    """Can this daemon do work now? {"ready": bool, "reason": str}: not while starting or
    stopping, nor while Redis does not answer (with Sentinels: the primary they name). For
    `/readyz` (503 unless ready); a Redis outage is not a wedged daemon, so the systemd watchdog
    keeps pinging meanwhile."""
    if not d.started:
        return {"ready": False, "reason": "starting"}
    if d.stop_requested:
        return {"ready": False, "reason": "stopping"}
    if probe is None:
        probe = probe_redis(d, _state(d))
    if not probe.get("reachable"):
        return {"ready": False, "reason": f"Redis unreachable: {probe.get('error')}"}
    return {"ready": True, "reason": "ok"}


# ----------------------------------------------------------------------------- components
def _refresh(st: _State, comp) -> None:
    try:
        value = comp.status()
        value = dict(value) if isinstance(value, dict) else {"status": value}
    except Exception as e:
        value = {"error": f"{type(e).__name__}: {e}"}
    st.components[comp.name] = (value, time.monotonic())


def _component_status(st: _State, comps, deadline: float, first_deadline: float) -> dict:
    started = {}
    for comp in comps:
        g = st.inflight.get(comp.name)
        if g is None or g.dead:
            g = st.inflight[comp.name] = gevent.spawn(_refresh, st, comp)
        started[comp.name] = (g, time.monotonic())
    gevent.joinall([g for g, _ in started.values()], timeout=max(0.0, deadline - time.monotonic()))
    never = [g for name, (g, _) in started.items() if not g.dead and name not in st.components]
    if never:
        gevent.joinall(never, timeout=max(0.0, first_deadline - time.monotonic()))
    out = {}
    now = time.monotonic()
    for comp in comps:
        g, t_start = started[comp.name]
        cached = st.components.get(comp.name)
        if cached is not None and cached[1] >= t_start:
            out[comp.name] = cached[0]           # answered in time
        elif cached is not None:
            out[comp.name] = {**cached[0], "stale": True, "age_s": round(now - cached[1], 3)}
        else:
            out[comp.name] = {"stale": True, "age_s": None,
                              "error": "no status yet (waiting for Redis?)"}
    return out


def status(d) -> dict:
    t0 = time.monotonic()
    deadline = t0 + STATUS_BUDGET_S
    st = _state(d)
    probe = gevent.spawn(probe_redis, d, st)
    comps = _component_status(st, list(d.components), deadline - 0.05, t0 + FIRST_ANSWER_S)
    probe.join(timeout=max(0.0, deadline - time.monotonic()))
    probed = probe.value if probe.successful() else {
        "reachable": False, "error": "no answer to PING in time"}
    if not probe.dead:
        probe.kill(block=False)
    cfg = d.cfg
    return {
        "pid": os.getpid(), "town": cfg.town.name, "root": str(cfg.root),
        "version": __version__, "instance": d.instance_id,
        "state": "stopping" if d.stop_requested else ("running" if d.started else "starting"),
        "uptime_s": round(time.time() - d.started_at, 3) if d.started_at else 0.0,
        "config_path": cfg.path, "reloads": d.reloads, "last_reload": d.last_reload,
        "log_level": logs.get_level(), "redis": redis_status(d, probed),
        "ready": readiness(d, probed),
        "services": d.supervisor.states(),
        "service_details": d.supervisor.details(),
        "components": comps,
        "status_ms": round((time.monotonic() - t0) * 1000, 1),
    }
