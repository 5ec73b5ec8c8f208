"""The bearer token of the HTTP listener: where it comes from and who must show it.

Probes (/healthz, /readyz) never need it, as with townhall: a kubelet or systemd probe carries no
token. /metrics needs it unless `http.metrics_public`. Everything else needs it once a token is
set. A browser that opened `/?token=…` once keeps it in a cookie (EventSource cannot send
headers). Tokens are compared in constant time and never logged.
"""
from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

COOKIE = "tinytownd_token"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def needs_token(path: str, *, token_set: bool, metrics_public: bool) -> bool:
    if not token_set or path in OPEN_PATHS:
        return False
    return not (path == "/metrics" and metrics_public)


def presented(environ: dict) -> str | None:
    """The token a request carries: Authorization: Bearer, else ?token=, else the cookie."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    q = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=20).get("token")
    if q:
        return q[0]
    raw = environ.get("HTTP_COOKIE")
    if raw:
        try:
            c = SimpleCookie(raw).get(COOKIE)
        except CookieError:
            return None
        if c is not None:
            return c.value
    return None


def token_ok(given: str | None, token: str) -> bool:
    """Constant-time comparison (the time does not depend on where the strings differ)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


def cookie_header(token: str) -> tuple[str, str]:
    """The Set-Cookie that lets the dashboard's later requests (fetch, EventSource) in."""
    return ("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")


def resolve_token(cfg) -> str | None:
    """The configured token (http.token, or the first line of http.token_file), or None.
    Raises config.checks.Invalid for an unreadable token file."""
    h = cfg.http
    if h.token:
        return h.token
    if h.token_file:
        from tinytownd.config.load import read_token_file
        return read_token_file(cfg.http_token_path)
    return None
