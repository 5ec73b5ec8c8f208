"""HttpListener: the daemon component that serves the HTTP endpoints with gevent's WSGI server,
in the daemon's own process and hub (no second process, no threads).

A slow or hostile client never blocks the daemon's other work:
* every connection is a greenlet with a socket timeout (http.header_timeout_s): a client that does
  not send its request line and headers in time, or sits idle on keep-alive, is dropped;
* request line + headers are at most http.max_request_bytes (else 431); a GET with a body is 413;
* at most http.max_connections at once: a new one closes the connection that has waited longest
  for a request, and when none is idle it gets a 503;
* at most http.max_sse_subscribers event streams (503 beyond), on a Redis pool of their own.
Binding happens at start (exit 73 when the port is taken, 78 for an address that is not ours),
before READY=1, so `systemctl start` fails loudly.
"""
from __future__ import annotations

import errno
import os
import socket
import time
import traceback

import redis
from gevent.pywsgi import WSGIHandler, WSGIServer

from tinytownd import exitcodes, logs
from tinytownd.config.checks import Invalid, parse_listen
from tinytownd.daemon.component import Component

from . import auth, readiness, town_view
from .routes import App
from .sse import Subscribers

LISTEN_BACKLOG = 1024
SSE_SOCKET_TIMEOUT_S = 30.0     # > sse.BLOCK_MS: a blocked XREAD is not a timeout


def _raw_response(code: str, message: str) -> bytes:
    body = ('{"error":"%s","status":%s}' % (message, code[:3])).encode()
    return (f"HTTP/1.1 {code}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Retry-After: 1\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


TOO_LARGE = _raw_response("431 Request Header Fields Too Large",
                          "request line and headers over http.max_request_bytes")
BUSY = _raw_response("503 Service Unavailable", "too many connections (http.max_connections)")


class _TooLarge(ValueError):
    pass


class _Budgeted:
    """The socket's reader while headers are parsed: at most `budget` bytes in all."""

    def __init__(self, f, budget: int):
        self.f, self.left = f, budget

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise _TooLarge("headers too large")
        line = self.f.readline(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise _TooLarge("headers too large")
        return line

    def __getattr__(self, name):
        return getattr(self.f, name)


class _Handler(WSGIHandler):
    def __init__(self, sock, address, server):
        super().__init__(sock, address, server)
        sock.settimeout(server.listener.cfg.http.header_timeout_s)

    def read_requestline(self):
        idle = self.server.idle
        idle[self] = time.monotonic()
        try:
            return super().read_requestline()
        finally:
            idle.pop(self, None)

    def read_request(self, raw_requestline):
        budget = self.server.listener.cfg.http.max_request_bytes - len(raw_requestline)
        real = self.rfile
        self.rfile = _Budgeted(real, budget)
        try:
            return super().read_request(raw_requestline)
        finally:
            self.rfile = real

    def _handle_client_error(self, ex):
        if isinstance(ex, _TooLarge):
            return ("431", TOO_LARGE)
        return super()._handle_client_error(ex)

    def run_application(self):
        if self.path.startswith("/api/events"):
            self.socket.settimeout(SSE_SOCKET_TIMEOUT_S)
        return super().run_application()

    def handle_error(self, t, v, tb):
        # The traceback as text, without the frames' locals (a local may hold the token).
        self.server.listener.log.error(
            "http request failed", path=(self.path or "")[:200], error=f"{t.__name__}: {v}"[:500],
            traceback="".join(traceback.format_exception(t, v, tb))[-4000:])
        self._send_error_response_if_possible(500)

    def log_request(self):
        pass                                   # no access log: probes and scrapes are constant


class _ErrorLog:
    """gevent's error_log (client errors: bad request lines, resets) at debug level."""

    def __init__(self, log):
        self.log = log

    def write(self, text: str) -> None:
        self.log.debug("http client error", detail=text.strip()[:300])

    def flush(self) -> None:
        pass


class _Server(WSGIServer):
    handler_class = _Handler

    def __init__(self, listener, sock, app):
        super().__init__(sock, app, log=None, error_log=_ErrorLog(listener.log))
        self.listener = listener
        self.idle: dict[_Handler, float] = {}
        self.active = 0

    def handle(self, sock, address):
        limit = self.listener.cfg.http.max_connections
        if self.active >= limit and not self._evict_idle():
            try:
                sock.settimeout(1.0)
                sock.sendall(BUSY)
            except OSError:
                pass
            finally:
                sock.close()
            return
        self.active += 1
        try:
            super().handle(sock, address)
        finally:
            self.active -= 1

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest for a request; False when none waits."""
        if not self.idle:
            return False
        victim = min(self.idle, key=self.idle.get)
        self.idle.pop(victim, None)
        try:
            victim.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        return True


def bind(listen: str) -> socket.socket:
    """A listening socket on `listen` (HOST:PORT). Raises OSError."""
    host, port = parse_listen(listen)
    if host == "localhost":
        host = "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class HttpListener(Component):
    name = "http"

    def __init__(self, ctx):
        super().__init__(ctx)
        from tinytownd.daemon.lifecycle import StartError
        self.daemon = ctx.extra["daemon"]
        self.keys = ctx.keys
        self.pid = os.getpid()
        self.log = logs.get_logger("tinytownd.http", town=ctx.keys.town)
        self.stopping = ctx.stopping
        self.subscribers = Subscribers()
        self.view = town_view.TownView(lambda: self.ctx.clients.cmd, ctx.keys)
        self._sse_client: tuple[tuple, redis.Redis] | None = None
        self.server: _Server | None = None
        self.sock: socket.socket | None = None
        self.url: str | None = None
        try:
            self.token = auth.resolve_token(ctx.config)
        except Invalid as e:
            raise StartError(f"http.token_file: {e.msg}", exitcodes.CONFIG) from None
        listen = ctx.config.http.listen
        if listen is None:
            return
        try:
            self.sock = bind(listen)
        except OSError as e:
            code = exitcodes.CANTCREAT if e.errno == errno.EADDRINUSE else exitcodes.CONFIG
            raise StartError(f"http.listen: cannot listen on {listen}: {e.strerror or e}",
                             code) from None
        self.url = url_of(self.sock)
        self.server = _Server(self, self.sock, App(self))
        self.log.info("http listening", url=self.url, token=self.token is not None)

    @property
    def cfg(self):
        return self.ctx.config

    # --- component --------------------------------------------------------------------------
    def services(self):
        return {"http": self._serve} if self.server is not None else {}

    def _serve(self) -> None:
        if not self.server.started:
            self.server.start()
        self.stopping.wait()

    def reload(self, old, new) -> list[str]:
        token = auth.resolve_token(new)        # config.load has checked the file
        changed = token != self.token
        self.token = token
        return ["http: token changed"] if changed else []

    def status(self) -> dict:
        if self.server is None:
            return {"listen": None}
        return {"listen": self.cfg.http.listen, "url": self.url,
                "connections": self.server.active, "sse_subscribers": self.subscribers.count,
                "token": self.token is not None, "metrics_public": self.cfg.http.metrics_public}

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1.0)
            self.server = None
        if self._sse_client is not None:
            self._sse_client[1].close()

    # --- what the routes use ----------------------------------------------------------------
    def town_view(self, budget_s: float, counts_only: bool = False
                  ) -> tuple[dict | None, str | None]:
        """The town view (or the reason it is unreadable); `counts_only`: just what /metrics
        and /api/scaling count of each agent."""
        fields = town_view.COUNT_FIELDS if counts_only else town_view.AGENT_FIELDS
        try:
            return self.view.get(budget_s, fields), None
        except town_view.Unavailable as e:
            return None, str(e)

    def readiness(self, *, detail: bool = False, view_error: str | None = None,
                  redis_probe: dict | None = None):
        from tinytownd.daemon.status import _state, probe_redis
        d = self.daemon
        if view_error is not None:
            redis_probe = {"reachable": False, "error": view_error}
        elif redis_probe is None:
            redis_probe = probe_redis(d, _state(d))
        state = "stopping" if d.stop_requested else ("running" if d.started else "starting")
        results = readiness.checks(redis_probe=redis_probe, services=d.supervisor.details(),
                                   stall_after_s=d.cfg.daemon.watchdog_stall_s, state=state)
        ok, failing = readiness.verdict(results)
        return (ok, failing, results) if detail else (ok, failing)

    def sse_redis(self) -> redis.Redis:
        """A pool for event streams only (one connection per subscriber, never the agents')."""
        url = self.ctx.clients.url
        size = self.cfg.http.max_sse_subscribers + 2
        if self._sse_client is None or self._sse_client[0] != (url, size):
            from tinytownd.daemon.redis_clients import _tls_kwargs
            c = redis.Redis.from_url(url, decode_responses=True, max_connections=size,
                                     socket_timeout=SSE_SOCKET_TIMEOUT_S,
                                     socket_connect_timeout=2.0, health_check_interval=0,
                                     **_tls_kwargs(self.cfg, url))
            self._sse_client = ((url, size), c)   # streams on the old pool finish on it
        return self._sse_client[1]

    def missions(self, view: dict, limit: int) -> list[dict]:
        return town_view.missions(self.ctx.clients.cmd, self.keys, limit)

    def batches(self, view: dict) -> list[dict]:
        return town_view.batches(self.ctx.clients.cmd, self.keys, self.view.scan)
