"""A highly available Redis: the primary found through Redis Sentinel (`redis.sentinel`).

* `make_pool` — the bounded, gevent-friendly pool of redis_clients.make_pool whose connections
  ask the Sentinels for the primary when they connect (redis-py's SentinelManagedConnection): a
  connection that meets a demoted primary (READONLY) is dropped and the next one re-resolves.
  That is not enough on its own: after a SENTINEL FAILOVER the former primary stays a writable
  master until the Sentinels convert it (~10 s here), and whatever still talks to it (a command
  in flight at the switch, a parked BLMOVE, a pub/sub listener, a kept script connection) writes
  into a copy that is thrown away, while the rest of the daemon works on the new primary. So the
  daemon's primary watch (failover.py) closes every connection to another node, idle or in use,
  as soon as it sees the change (`SentinelPool.drop_others`).
* `check` — at start: which Sentinel knows the master name and where the primary is; every node
  tried is named when none answers (RedisUnavailable → exit 69).
* `primary_url` — the primary of the moment as a URL (what agent CLIs get as REDIS_URL for tt).

A Redis Cluster endpoint is refused (redis_clients.check_server): tt's keys have no hash tags,
so the town's multi-key scripts and transactions cannot run on a cluster.
"""
from __future__ import annotations

import socket
import weakref
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool
from redis.retry import Retry
from redis.sentinel import (Sentinel, SentinelConnectionPoolProxy, SentinelManagedConnection,
                            SentinelManagedSSLConnection)

from tinytownd.config import Config
from tinytownd.config.checks import host_port

from .redis_clients import RedisUnavailable, check_server

SENTINEL_TIMEOUT_S = 1.0     # connect/read of one Sentinel query


class _ResolveOnReconnect:
    """A primary connection that asks the Sentinels where the primary is on every (re)connect.
    redis-py's SentinelManagedConnection does so in connect(), but redis-py 8 reconnects a
    dropped connection (a command's retry, a send on a closed socket) through
    connect_check_health with the address it had: after a failover, the former primary, which
    takes writes into a copy that is thrown away until the Sentinels convert it."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True):
        if self._sock is None:
            self.host, self.port = self.connection_pool.get_master_address()
        return super().connect_check_health(check_health=check_health,
                                            retry_socket_connect=retry_socket_connect)

    def _connect_retry(self):
        if self._sock is None:      # connect_check_health resolves (one Sentinel query)
            self.connect_check_health(check_health=self.connection_pool.check_connection,
                                      retry_socket_connect=False)


class PrimaryConnection(_ResolveOnReconnect, SentinelManagedConnection):
    pass


class PrimarySSLConnection(_ResolveOnReconnect, SentinelManagedSSLConnection):
    pass


class SentinelPool(BlockingConnectionPool):
    """BlockingConnectionPool (bounded; a burst waits for a connection) of Sentinel-managed
    connections: redis-py's SentinelConnectionPool on top of the blocking pool."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kw):
        kw["connection_class"] = PrimarySSLConnection if kw.pop("ssl", False) else \
            PrimaryConnection
        self.is_master = True
        self.check_connection = False
        self.service_name = service_name
        self.sentinel_manager = sentinel_manager
        self.proxy = SentinelConnectionPoolProxy(
            connection_pool=self, is_master=True, check_connection=False,
            service_name=service_name, sentinel_manager=sentinel_manager)
        self._made: weakref.WeakSet = weakref.WeakSet()   # every connection this pool made
        super().__init__(**kw)
        self.connection_kwargs["connection_pool"] = self.proxy

    def make_connection(self):
        conn = super().make_connection()
        self._made.add(conn)
        return conn

    def drop_others(self, addr: tuple[str, int]) -> int:
        """Close every connection of this pool, idle or in use, that is connected to a node other
        than `addr` (the primary now). A command in flight on one fails with ConnectionError and
        is retried on the new primary (its write to the old one is lost with that copy anyway);
        a parked BLMOVE returns with the error. Returns how many were closed.

        The sockets are shut down, not closed: whichever greenlet is using one keeps a valid
        socket, its next read meets the end of the stream and fails as a ConnectionError, and
        it disconnects (then reconnects through the Sentinels) itself. Closing it under that
        greenlet would leave it polling a socket that is gone (a TypeError, not a Redis error)."""
        n = 0
        for conn in list(self._made):
            sock = getattr(conn, "_sock", None)
            if sock is not None and (conn.host, conn.port) != tuple(addr):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:     # already gone: its owner finds out the same way
                    pass
                n += 1
        return n

    def reset(self):
        super().reset()
        if hasattr(self, "proxy"):
            self.proxy.reset()

    @property
    def master_address(self):
        return self.proxy.master_address

    def owns_connection(self, connection) -> bool:
        # a connection to a former primary is not put back
        return self.master_address == (connection.host, connection.port) and \
            connection.pid == self.pid

    def get_master_address(self):
        return self.proxy.get_master_address()


def nodes(cfg: Config) -> list[tuple[str, int]]:
    return [host_port(n) for n in cfg.redis.sentinel.nodes]


def _tls(cfg: Config) -> dict:
    """ssl kwargs for Sentinels and data nodes (`redis.sentinel.tls`, files of redis.tls)."""
    if not cfg.redis.sentinel.tls:
        return {}
    t = cfg.redis.tls
    kw: dict = {"ssl": True}
    if t.ca_cert:
        kw["ssl_ca_certs"] = str(cfg.resolve(t.ca_cert))
    if t.cert and t.key:
        kw["ssl_certfile"] = str(cfg.resolve(t.cert))
        kw["ssl_keyfile"] = str(cfg.resolve(t.key))
    return kw


def _sentinel_kwargs(cfg: Config, timeout: float = SENTINEL_TIMEOUT_S) -> dict:
    kw = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
          "retry": Retry(NoBackoff(), 0), **_tls(cfg)}
    if cfg.redis.sentinel.password:
        kw["password"] = cfg.redis.sentinel.password
    return kw


_MANAGERS: dict = {}


def manager(cfg: Config) -> Sentinel:
    """The process's Sentinel client for these settings (shared by its pools)."""
    s = cfg.redis.sentinel
    key = (tuple(s.nodes), s.password, s.tls, cfg.redis.tls)
    m = _MANAGERS.get(key)
    if m is None:
        m = _MANAGERS[key] = Sentinel(nodes(cfg), sentinel_kwargs=_sentinel_kwargs(cfg))
    return m


def data_kwargs(cfg: Config) -> dict:
    """Connection kwargs for the data nodes (password, TLS)."""
    kw = dict(_tls(cfg))
    if cfg.redis.password:
        kw["password"] = cfg.redis.password
    return kw


def make_pool(cfg: Config, kw: dict) -> SentinelPool:
    """A SentinelPool with redis_clients.make_pool's kwargs `kw` (sizes, timeouts, retry)."""
    return SentinelPool(cfg.redis.sentinel.master, manager(cfg), **kw, **data_kwargs(cfg))


# ----------------------------------------------------------------------------- at start
def resolve(cfg: Config, timeout: float = SENTINEL_TIMEOUT_S) -> tuple[str, int]:
    """The primary's address according to the first Sentinel that knows the master name.
    RedisUnavailable names every node tried and what it said."""
    s = cfg.redis.sentinel
    tried = []
    for host, port in nodes(cfg):
        c = redis.Redis(host=host, port=port, decode_responses=True,
                        **_sentinel_kwargs(cfg, timeout))
        where = f"{host}:{port}"
        try:
            addr = c.execute_command("SENTINEL", "get-master-addr-by-name", s.master)
        except redis.AuthenticationError as e:
            tried.append(f"{where}: authentication failed ({e}; see redis.sentinel.password)")
            continue
        except redis.ResponseError as e:
            msg = str(e)
            if "NOAUTH" in msg or "WRONGPASS" in msg:
                tried.append(f"{where}: authentication failed ({msg}; see "
                             "redis.sentinel.password)")
            else:
                tried.append(f"{where}: not a Sentinel? ({msg})")
            continue
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            tried.append(f"{where}: cannot connect ({e})")
            continue
        finally:
            c.close()
        if not addr:
            tried.append(f"{where}: does not know the master name {s.master!r}")
            continue
        return str(addr[0]), int(addr[1])
    raise RedisUnavailable(f"no Sentinel in redis.sentinel.nodes gives a primary for "
                           f"{s.master!r}: " + "; ".join(tried))


def primary_url(cfg: Config, addr: tuple[str, int], *, redacted: bool = False) -> str:
    host, port = addr
    if ":" in host:
        host = f"[{host}]"
    pw = cfg.redis.password
    auth = f":{'****' if redacted else quote(pw, safe='')}@" if pw else ""
    return f"{'rediss' if cfg.redis.sentinel.tls else 'redis'}://{auth}{host}:{port}"


def check(cfg: Config) -> tuple[str, tuple[str, int]]:
    """Resolve the primary through the Sentinels and check it as an external Redis is checked
    (PING, AUTH, version, not a cluster). Returns (version, primary address)."""
    addr = resolve(cfg)
    where = f"{addr[0]}:{addr[1]} (primary of {cfg.redis.sentinel.master!r})"
    client = redis.Redis(host=addr[0], port=addr[1], decode_responses=True,
                         socket_connect_timeout=5.0, socket_timeout=5.0,
                         retry=Retry(NoBackoff(), 0), **data_kwargs(cfg))
    try:
        return check_server(client, where), addr
    finally:
        client.close()


def probe_client(cfg: Config, addr: tuple[str, int], timeout: float) -> redis.Redis:
    """A client for status's PING of the primary at `addr` (short timeouts, no retries)."""
    return redis.Redis(host=addr[0], port=addr[1], socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                       max_connections=8, health_check_interval=0, **data_kwargs(cfg))
