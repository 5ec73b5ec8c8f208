"""Garbage collection for a long-running daemon with many agents: freeze what start-up built.

A daemon builds almost everything it keeps at start-up (config, agents, their greenlets, Redis
connections, compiled scripts) and then allocates short-lived objects per round. CPython's
oldest generation still walks all of the start-up objects on every full collection: with 1,000
agents one full collection held the event loop for ~100 ms (gc.callbacks in the pickup
benchmark), which was the pickup tail. `settle()` collects once and moves the survivors to the
permanent generation (gc.freeze), so later full collections only walk what was made since.

`Settler.poll()` (called by the agents service every pass) settles when the agents it runs have
all started, and again after their number changed (a reload added agents), at most once per
SETTLE_MIN_GAP_S. `release()` (runtime close) gives frozen objects back to the collector, so a
process that runs several runtimes one after another (the tests) does not keep their objects.
"""
from __future__ import annotations

import gc
import time

SETTLE_MIN_GAP_S = 60.0


def settle() -> float:
    """Collect, then freeze the survivors. Returns the seconds it took."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0


def release() -> None:
    gc.unfreeze()


def should_settle(started: int, total: int, settled_at_count: int | None,
                  last_settle: float | None, now: float, min_gap_s: float = SETTLE_MIN_GAP_S
                  ) -> bool:
    """Settle once every agent that runs has started, when their count differs from the one
    last settled with; not twice within min_gap_s."""
    if total == 0 or started < total or total == settled_at_count:
        return False
    return last_settle is None or now - last_settle >= min_gap_s


class Settler:
    def __init__(self, log=None):
        self.log = log
        self.count: int | None = None
        self.at: float | None = None

    def poll(self, workers) -> None:
        ws = list(workers)
        started = sum(1 for w in ws if w.state != "starting")
        now = time.monotonic()
        if not should_settle(started, len(ws), self.count, self.at, now):
            return
        took = settle()
        self.count, self.at = len(ws), now
        if self.log is not None:
            self.log.info("start-up objects frozen for the garbage collector", agents=len(ws),
                          frozen=gc.get_freeze_count(), took_ms=round(took * 1000, 1))


class paused:
    """No cyclic collection inside the block: for a burst of short-lived, acyclic allocations
    (reading 3,000 replies into 1,000 dicts) that would otherwise set off a few generation-0
    collections and, every few bursts, a full one in the middle of the burst. Reference counting
    still frees everything; what survives is collected after the block, as usual. Nested or
    with collection already off, it leaves the setting as it found it."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self.was_enabled:
            gc.enable()
