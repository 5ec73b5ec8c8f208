"""Redis clients for tinytownd, sized explicitly for gevent (redis-py's defaults are wrong for it).

Two pools per process, never redis-py's defaults:
  * `cmd`   — ordinary commands: BlockingConnectionPool(pool_size), bounded socket timeouts, so a
              burst waits for a connection instead of failing with MaxConnectionsError;
  * `block` — blocking pops only (BLMOVE/BLPOP): one connection per parked consumer,
              socket_timeout=None (a client-side timeout would re-send a BLMOVE whose element the
              server already moved), 4 KiB read buffers (halves RSS per parked agent).
Both decode responses to str. Reconnection after a Redis restart is redis-py's: a broken pooled
connection is dropped and the next command reconnects (retried with backoff on ConnectionError).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from tinytownd import __version__
from tinytownd.config import Config, redact_url
from tinytownd.store.packing import EscapingPacker

MIN_VERSION = (7, 0)
CLUSTER_REFUSED = ("Redis at {where} is a Redis Cluster node (cluster_enabled:1): tinytownd cannot "
                   "use a cluster, because Tinytown's keys (tt:<town>:…) have no hash tags and "
                   "the town's scripts and transactions touch many keys at once. Serve a town "
                   "from one primary (with replicas and Sentinel for failover); to scale past "
                   "one primary, put one town per shard (each town on a primary of its own)")


def _cheap_can_read() -> None:
    """redis-py 8 checks every pooled connection with a `select.poll()` of timeout 0 before each
    command (ConnectionPool.get_connection → can_read). Under gevent's monkey-patched select that
    zero-timeout poll creates watchers and switches to the hub: ~16 hub switches per agent round.
    Use the original poll for timeout 0 (it cannot block) and gevent's for real waits (PubSub
    get_message(timeout=…)). Idempotent; a no-op without gevent patching."""
    try:
        import select as _select

        from gevent import monkey
        import redis._parsers.hiredis as _h
    except ImportError:  # pragma: no cover
        return
    if not monkey.is_module_patched("select") or getattr(_h.select, "_tinytownd", False):
        return
    orig_poll = monkey.get_original("select", "poll")
    green_poll = _select.poll

    class _Poll:
        __slots__ = ("regs",)

        def __init__(self):
            self.regs = []

        def register(self, fd, mask=_select.POLLIN | _select.POLLPRI | _select.POLLOUT):
            self.regs.append((fd, mask))

        def poll(self, timeout=None):
            p = orig_poll() if timeout == 0 else green_poll()
            for fd, mask in self.regs:
                p.register(fd, mask)
            return p.poll(timeout)

    ns = type("select", (), {k: getattr(_select, k) for k in dir(_select) if k.startswith("POLL")})
    ns.poll = _Poll
    ns._tinytownd = True
    _h.select = ns


_cheap_can_read()


class RedisUnavailable(Exception):
    """Redis cannot be used: unreachable, refused auth, or too old. The message says which."""


@dataclass
class Clients:
    cmd: redis.Redis
    block: redis.Redis
    url: str          # as used (may hold a password: never log it)
    redacted: str

    def close(self) -> None:
        for c in (self.cmd, self.block):
            try:
                c.connection_pool.disconnect()
            except Exception:
                pass


def _tls_kwargs(cfg: Config | None, url: str) -> dict:
    if urlsplit(url).scheme != "rediss" or cfg is None:
        return {}
    t = cfg.redis.tls
    kw: dict = {}
    if t.ca_cert:
        kw["ssl_ca_certs"] = str(cfg.resolve(t.ca_cert))
    if t.auth_clients or (cfg.redis.url is None and t.cert):
        if t.cert and t.key:
            kw["ssl_certfile"] = str(cfg.resolve(t.cert))
            kw["ssl_keyfile"] = str(cfg.resolve(t.key))
    return kw


class _ReconnectRetry(Retry):
    """Retry a command whose connection broke (e.g. the owned child restarted), with backoff.

    Never retried: refused credentials (AuthenticationError is a ConnectionError subclass, and
    retrying only delays the error), and timeouts (a timed-out write may have been applied).
    """

    def __init__(self):
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), 5,
                         supported_errors=(redis.ConnectionError,))

    def call_with_retry(self, do, fail, is_retryable=None, **kw):
        def retryable(err):
            if isinstance(err, (redis.AuthenticationError, redis.TimeoutError)):
                return False
            return is_retryable is None or is_retryable(err)
        return super().call_with_retry(do, fail, retryable, **kw)


def _driver_info() -> DriverInfo:
    """CLIENT SETINFO of every connection (`redis-py(tinytownd_v…)` in CLIENT LIST), made once:
    left to redis-py 8, each new connection reads its version through importlib.metadata
    (0.57–0.68 s per 1,000 connections against 0.04–0.06 s
    with this; 1,000 parked agents each open one)."""
    info = DriverInfo(name="redis-py", lib_version=redis.__version__)
    info.add_upstream_driver("tinytownd", __version__)
    return info


DRIVER_INFO = _driver_info()


def make_pool(url: str, *, max_connections: int, blocking: bool, cfg: Config | None = None,
              timeout: float | None = 20.0) -> redis.BlockingConnectionPool:
    # surrogateescape: a value that is not UTF-8 reads as text with surrogate escapes instead of
    # failing the whole reply (records.utf8_clean tells them apart; records.to_bytes undoes it)
    kw = dict(max_connections=max_connections, timeout=timeout, decode_responses=True,
              encoding_errors="surrogateescape", command_packer=EscapingPacker(),
              socket_connect_timeout=5.0, driver_info=DRIVER_INFO, **_tls_kwargs(cfg, url))
    if blocking:
        kw.update(socket_timeout=None, socket_read_size=4096)
    else:
        kw.update(socket_timeout=30.0, health_check_interval=30, retry=_ReconnectRetry())
    if cfg is not None and cfg.sentinel is not None:   # the primary found through Sentinels
        from . import redis_ha
        return redis_ha.make_pool(cfg, kw)
    return redis.BlockingConnectionPool.from_url(url, **kw)


def make_clients(cfg: Config, *, blocking_connections: int = 16, url: str | None = None) -> Clients:
    """Clients for the town in `cfg` (owned child or external URL)."""
    url = url or cfg.redis_url()
    cmd = redis.Redis(connection_pool=make_pool(url, max_connections=cfg.redis.pool_size,
                                                blocking=False, cfg=cfg))
    block = redis.Redis(connection_pool=make_pool(url, max_connections=max(1, blocking_connections),
                                                  blocking=True, cfg=cfg, timeout=None))
    return Clients(cmd=cmd, block=block, url=url, redacted=redact_url(url))


def client_for_url(url: str, *, max_connections: int = 8, cfg: Config | None = None) -> redis.Redis:
    return redis.Redis(connection_pool=make_pool(url, max_connections=max_connections,
                                                 blocking=False, cfg=cfg))


def parse_version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0", "0"])[:2]
    return int(parts[0]), int(parts[1])


def check_server(client: redis.Redis, redacted_url: str) -> str:
    """PING + INFO server; return the version. Raises RedisUnavailable with a specific reason."""
    try:
        client.ping()
        info = client.info("server", "cluster")
    except redis.AuthenticationError as e:
        raise RedisUnavailable(f"Redis authentication failed at {redacted_url}: {e}") from None
    except redis.ResponseError as e:
        msg = str(e)
        if "NOAUTH" in msg or "WRONGPASS" in msg:
            raise RedisUnavailable(f"Redis authentication failed at {redacted_url}: {msg}") from None
        raise RedisUnavailable(f"Redis at {redacted_url} refused PING: {msg}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise RedisUnavailable(f"cannot connect to Redis at {redacted_url}: {e}") from None
    if str(info.get("cluster_enabled", "0")) == "1":
        raise RedisUnavailable(CLUSTER_REFUSED.format(where=redacted_url))
    version = str(info.get("redis_version", "0"))
    if parse_version(version) < MIN_VERSION:
        raise RedisUnavailable(f"Redis at {redacted_url} is version {version}; tinytownd needs "
                               f">= {MIN_VERSION[0]}.{MIN_VERSION[1]}")
    return version


def check_external(cfg: Config) -> str:
    """Check the external Redis of `cfg` once, without retries (a wrong password or a dead host
    is reported at once); return its version. ValueError for an unusable URL, RedisUnavailable
    with the reason otherwise."""
    from redis.backoff import NoBackoff

    redacted = redact_url(cfg.redis.url)
    try:
        client = redis.Redis.from_url(cfg.redis.url, decode_responses=True,
                                      socket_connect_timeout=5.0, socket_timeout=5.0,
                                      retry=Retry(NoBackoff(), 0),
                                      **_tls_kwargs(cfg, cfg.redis.url))
    except ValueError as e:
        raise ValueError(f"invalid Redis URL {redacted}: {e}") from None
    try:
        return check_server(client, redacted)
    finally:
        client.close()
