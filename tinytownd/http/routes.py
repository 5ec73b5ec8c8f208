"""The WSGI application of the listener: one function per path, all read-only (GET/HEAD).

    /healthz      200 while the process runs (uptime, version)
    /readyz       200 when ready, else 503 naming each failing check
    /metrics      Prometheus text (prometheus_client): the daemon's instruments + the town's gauges
    /api/status   the same JSON as `tinytownd status --json`
    /api/scaling  townhall's autoscaling signal
    /api/events   Server-Sent Events from the town stream (?agent=, ?mission=, Last-Event-ID)
    /api/dashboard what the dashboard page shows, in one JSON document
    /             the dashboard page
"""
from __future__ import annotations

import json
import time
from importlib import resources
from urllib.parse import parse_qs

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tinytownd import __version__, metrics
from tinytownd.store.agents import match_agents

from . import auth, feed, scaling, sse
from .collectors import TownCollector

VIEW_BUDGET_S = 1.0
MAX_MISSIONS_SHOWN = 20
JSON = "application/json"


def _json(start, code: str, obj, extra=()) -> list[bytes]:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    start(code, [("Content-Type", JSON), ("Cache-Control", "no-store"),
                 ("Content-Length", str(len(body))), *extra])
    return [body]


def _error(start, code: str, message: str, extra=()) -> list[bytes]:
    return _json(start, code, {"error": message, "status": int(code[:3])}, extra)


class _Exposition:
    """What /metrics renders: the daemon's registry, then the town collector."""

    def __init__(self, listener):
        self.town = TownCollector(listener)

    def collect(self):
        yield from metrics.REGISTRY.collect()
        yield from self.town.collect()


class App:
    def __init__(self, listener):
        self.li = listener
        self.exposition = _Exposition(listener)
        self._page: bytes | None = None
        self.routes = {"/healthz": self.healthz, "/readyz": self.readyz,
                       "/metrics": self.metrics, "/api/status": self.status,
                       "/api/scaling": self.scaling, "/api/events": self.events,
                       "/api/dashboard": self.dashboard_data, "/": self.page}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        fn = self.routes.get(path)
        code_box = []

        def start(status, headers, exc_info=None):
            code_box.append(status[:3])
            return start_response(status, headers, exc_info)

        try:
            return self._dispatch(fn, path, environ, start)
        finally:
            metrics.HTTP_REQUESTS.inc(path if fn else "other", code_box[0] if code_box else "500")

    def _dispatch(self, fn, path, environ, start):
        method = environ.get("REQUEST_METHOD", "GET")
        if fn is None:
            return _error(start, "404 Not Found", f"no such endpoint {path[:100]!r}")
        if method not in ("GET", "HEAD"):
            return _error(start, "405 Method Not Allowed", "read-only: GET or HEAD",
                          [("Allow", "GET, HEAD")])
        if environ.get("CONTENT_LENGTH") not in (None, "", "0") or \
                environ.get("HTTP_TRANSFER_ENCODING"):
            return _error(start, "413 Content Too Large", "a GET carries no body")
        token = self.li.token
        h = self.li.cfg.http
        if auth.needs_token(path, token_set=token is not None, metrics_public=h.metrics_public):
            if not auth.token_ok(auth.presented(environ), token):
                return _error(start, "401 Unauthorized", "a valid bearer token is required",
                              [("WWW-Authenticate", 'Bearer realm="tinytownd"')])
        return fn(environ, start)

    # --- probes -----------------------------------------------------------------------------
    def healthz(self, environ, start):
        d = self.li.daemon
        return _json(start, "200 OK", {
            "status": "ok", "version": __version__, "pid": self.li.pid,
            "town": self.li.cfg.town.name,
            "uptime_s": round(time.time() - d.started_at, 3) if d.started_at else 0.0})

    def readyz(self, environ, start):
        ok, failing, checks = self.li.readiness(detail=True)
        return _json(start, "200 OK" if ok else "503 Service Unavailable",
                     {"status": "ready" if ok else "not_ready", "failing": failing,
                      "checks": checks})

    def metrics(self, environ, start):
        body = generate_latest(self.exposition)
        start("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
                         ("Cache-Control", "no-store")])
        return [body]

    # --- API -------------------------------------------------------------------------------
    def status(self, environ, start):
        from tinytownd.daemon.status import status
        return _json(start, "200 OK", status(self.li.daemon))

    def _view_or_503(self, start, counts_only: bool = False):
        view, error = self.li.town_view(VIEW_BUDGET_S, counts_only)
        if view is None:
            return None, _error(start, "503 Service Unavailable", f"town not readable: {error}")
        return view, None

    def scaling(self, environ, start):
        view, err = self._view_or_503(start, counts_only=True)
        if err:
            return err
        return _json(start, "200 OK", self._scaling(view))

    def _scaling(self, view) -> dict:
        n = len(self.li.cfg.expanded_agents())
        return scaling.signal(
            town=self.li.cfg.town.name, agents=view["agents"], backlog=view["backlog"],
            assigned_pending=sum(a.get("assigned_pending", 0) for a in view["agents"]),
            running_task_ids=view["running_task_ids"], now=time.time(),
            max_agents=n or scaling.MAX_AGENTS)

    def events(self, environ, start):
        q = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=20)
        start_id = environ.get("HTTP_LAST_EVENT_ID") or (q.get("last_event_id") or [None])[0]
        if start_id is not None and not feed.valid_stream_id(start_id):
            return _error(start, "400 Bad Request", "Last-Event-ID must be a stream id "
                                                    "(<ms>-<seq>)")
        try:
            replay = int((q.get("last") or ["0"])[0])
        except ValueError:
            return _error(start, "400 Bad Request", "last must be a number")
        if not 0 <= replay <= sse.MAX_REPLAY:
            return _error(start, "400 Bad Request", f"last must be 0..{sse.MAX_REPLAY}")
        mission = (q.get("mission") or [None])[0]
        agents = None
        r = self.li.sse_redis()
        if q.get("agent"):
            ref = q["agent"][0]
            try:
                agents = self._agent_ids(r, ref)
            except (redis.RedisError, OSError) as e:
                return _error(start, "503 Service Unavailable", f"Redis: {e}")
            if not agents:
                return _error(start, "404 Not Found", f"no agent {ref[:100]!r}")
        subs = self.li.subscribers
        if not subs.try_add(self.li.cfg.http.max_sse_subscribers):
            return _error(start, "503 Service Unavailable",
                          "too many event subscribers (http.max_sse_subscribers)",
                          [("Retry-After", "5")])
        start("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                         ("X-Accel-Buffering", "no")])
        return sse.stream(r, self.li.keys.events, start=start_id, replay=replay, agents=agents,
                          mission=mission, stopping=self.li.stopping, on_close=subs.remove)

    def _agent_ids(self, r, ref: str) -> set[str]:
        k = self.li.keys
        if r.exists(k.agent(ref)):
            return {ref}
        names = r.hgetall(k.agent_names)
        if ref in names:
            return {names[ref]}
        view, _ = self.li.town_view(VIEW_BUDGET_S)
        return {a["id"] for a in match_agents(view["agents"] if view else [], ref)}

    def dashboard_data(self, environ, start):
        view, err = self._view_or_503(start)
        if err:
            return err
        li = self.li
        d = li.daemon
        ok, failing, _checks = li.readiness(detail=True)
        doc = {"town": li.cfg.town.name, "version": __version__, "pid": li.pid,
               "uptime_s": round(time.time() - d.started_at, 3) if d.started_at else 0.0,
               "ready": ok, "failing": failing,
               "agents": [{k: a.get(k) for k in ("id", "name", "state", "cli", "current_task",
                                                  "rounds_completed", "tasks_completed",
                                                  "inbox", "urgent", "role_id")}
                          for a in view["agents"]],
               "queues": {"backlog": view["backlog"],
                          "inboxes": sum(a["inbox"] for a in view["agents"]),
                          "urgent": sum(a["urgent"] for a in view["agents"]),
                          "deadletter": view["deadletter"]},
               "tasks_by_state": view["tasks_by_state"],
               "throughput": metrics.throughput(time.time()),
               "scaling": self._scaling(view),
               "missions": li.missions(view, MAX_MISSIONS_SHOWN),
               "batches": li.batches(view),
               "read_ms": view["read_ms"]}
        return _json(start, "200 OK", doc)

    def page(self, environ, start):
        if self._page is None:
            self._page = resources.files("tinytownd.http").joinpath("dashboard.html").read_bytes()
        headers = [("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(self._page))), ("Cache-Control", "no-store"),
                   ("Content-Security-Policy", "default-src 'self'; style-src 'self' "
                    "'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:")]
        given = auth.presented(environ)
        if self.li.token is not None and auth.token_ok(given, self.li.token):
            headers.append(auth.cookie_header(self.li.token))
        start("200 OK", headers)
        return [self._page]
