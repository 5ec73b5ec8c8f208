"""Writes that must survive a failover: `WAIT <replicas> <timeout ms>` right after them.

Redis replicates asynchronously: a write the primary acknowledged can die with it when a replica
that had not received it yet is promoted. `redis.wait_replicas: N` closes that window for the
writes that carry work — a task's creation together with its inbox message (Town.send_raw
transactions, backlog_add, the mission tick), a backlog claim, a round's start and its end
(the scripts in DURABLE) — by sending WAIT on the same connection right after the write (WAIT
cannot run inside a script or a MULTI). A WAIT that gets fewer than N replicas is counted and
logged; the write itself stands (it was applied, and repeating it would apply it twice).

WAIT is not a consensus protocol: Sentinel may still promote a replica that missed a write
another replica acknowledged, and a primary that loses its replicas keeps accepting writes.
With N = 0 (the default) nothing is sent and nothing is measured.
"""
from __future__ import annotations

import time

import redis

from .packing import pack

# the scripts whose writes carry work (see the module doc); others need no WAIT
DURABLE = frozenset({"claim_backlog", "round_start", "round_ok", "round_ok_take", "finish_task",
                     "ack_round"})
LOG_EVERY_S = 10.0          # a run of short WAITs is logged once per this


class Durability:
    """WAIT after durable writes, with counters for status: waits, short (fewer replicas than
    asked), errors (the WAIT itself failed: the primary went away right after the write)."""

    def __init__(self, replicas: int, timeout_ms: int, log=None):
        self.replicas = int(replicas)
        self.timeout_ms = int(timeout_ms)
        self.log = log
        self.waits = self.short = self.errors = 0
        self.min_seen: int | None = None
        self._packed = pack(("WAIT", self.replicas, self.timeout_ms))
        self._logged_at = 0.0
        self._unlogged = 0

    @classmethod
    def from_config(cls, cfg, log=None) -> "Durability | None":
        n = cfg.redis.wait_replicas
        return cls(n, cfg.redis.wait_timeout_ms, log) if n else None

    def status(self) -> dict:
        return {"replicas": self.replicas, "timeout_ms": self.timeout_ms, "waits": self.waits,
                "short": self.short, "errors": self.errors, "min_replicas_seen": self.min_seen}

    # ------------------------------------------------------------------ results
    def note(self, got) -> None:
        """Record one WAIT's reply (the replicas that have the write, or an exception)."""
        self.waits += 1
        if isinstance(got, BaseException):
            self.errors += 1
            self._complain("WAIT failed after a durable write (the write stands)",
                           error=f"{type(got).__name__}: {got}"[:300])
            return
        got = int(got)
        self.min_seen = got if self.min_seen is None else min(self.min_seen, got)
        if got < self.replicas:
            self.short += 1
            self._complain("WAIT: fewer replicas than redis.wait_replicas have a durable write "
                           "(the write stands)", replicas=got, wanted=self.replicas)

    def _complain(self, msg: str, **fields) -> None:
        now = time.monotonic()
        if self.log is None:
            return
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        self.log.warning(msg, since_last_line=self._unlogged, short_total=self.short,
                         errors_total=self.errors, **fields)
        self._logged_at, self._unlogged = now, 0

    # ------------------------------------------------------------------ sending
    def packed(self) -> bytes:
        return self._packed

    def command(self) -> tuple:
        return ("WAIT", self.replicas, self.timeout_ms)

    def read(self, conn) -> None:
        """Read the reply of a WAIT sent on `conn` (error replies are noted, never raised; a
        broken connection is dropped)."""
        try:
            self.note(conn.read_response())
        except redis.ResponseError as e:
            self.note(e)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            conn.disconnect()
            self.note(e)

    def after(self, conn) -> None:
        """WAIT on `conn`, whose last command was the durable write."""
        try:
            conn.send_packed_command([self._packed])
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            conn.disconnect()
            self.note(e)
            return
        self.read(conn)

    def call(self, conn, packed_cmd: bytes):
        """Send one command and a WAIT in one write; return the command's reply (an error
        reply is raised once the WAIT's reply is read too)."""
        conn.send_packed_command([packed_cmd, self._packed])
        try:
            res = conn.read_response()
        except redis.ResponseError:
            self.read(conn)
            raise
        self.read(conn)
        return res

    def wrap(self, pipe):
        """Make `pipe` (a MULTI/EXEC pipeline, WATCH or not) WAIT after a successful EXEC, on
        the connection that ran it."""
        orig = pipe._execute_transaction

        def run(connection, commands, raise_on_error):
            res = orig(connection, commands, raise_on_error)
            self.after(connection)
            return res
        pipe._execute_transaction = run
        return pipe


def wrap(durability: Durability | None, pipe):
    """`pipe`, WAITing after its EXEC when `durability` is set."""
    return pipe if durability is None else durability.wrap(pipe)
