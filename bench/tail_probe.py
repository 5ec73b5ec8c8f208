"""What sets the pickup tail: a probe for bench_dispatch (enabled with TT_BENCH_PROBE=1).

It records, on the one gevent thread of the in-process runtime:
  gc        every collection (gc.callbacks): start, duration, generation;
  slices    every stretch one greenlet ran without switching (greenlet.settrace), with its
            wall and thread-CPU time, labelled by what the greenlet runs (Worker.run,
            AgentsService.run, the hub, the bench's producer...); a slice whose wall time is
            far above its CPU time was blocked in a system call or preempted by the machine;
  calls     the wall time of the suspects' own calls: heartbeat passes (AgentsService.beat),
            sweeps (Sweeper.sweep_once), log writes (the structlog sink), backlog claims.

`explain(samples)` takes the pickup samples (sent, started) and, for the slowest 1 %, sums what
overlapped each one's window by cause, so the table says which cause sat under the tail.
"""
from __future__ import annotations

import gc
import os
import time
from collections import defaultdict

import greenlet

ENABLED = os.environ.get("TT_BENCH_PROBE", "") not in ("", "0")
SLICE_MIN_S = 0.0005      # slices shorter than this are counted, not kept


def _label(g) -> str:
    if g is None:
        return "?"
    if getattr(g, "parent", 1) is None:
        return "main (bench producer)"
    if type(g).__name__ == "Hub":
        return "hub (libev loop)"
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    fn = getattr(run, "__func__", run)
    name = getattr(fn, "__qualname__", None) or type(g).__name__
    return name.replace("<locals>.", "")


class Probe:
    def __init__(self):
        self.gc: list[tuple[float, float, int]] = []          # (t0, dt, generation)
        self.gc_cpu: list[tuple[int, float]] = []             # (generation, thread CPU s)
        self._gc_c0 = 0.0
        self.slices: list[tuple[float, float, float, str]] = []   # (t0, dt, cpu, label)
        self.calls: list[tuple[float, float, str]] = []        # (t0, dt, what)
        self.short_slices = 0
        self._gc_t0 = 0.0
        self._sl_t0 = time.perf_counter()
        self._sl_c0 = time.thread_time()
        self._labels: dict[int, str] = {}
        self._patched: list[tuple[object, str, object]] = []

    # ------------------------------------------------------------------ gc
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            self._gc_c0 = time.thread_time()
        else:
            gen = info.get("generation", -1)
            self.gc.append((self._gc_t0, time.perf_counter() - self._gc_t0, gen))
            self.gc_cpu.append((gen, time.thread_time() - self._gc_c0))

    # ------------------------------------------------------------------ greenlet slices
    def _on_switch(self, event: str, args) -> None:
        if event not in ("switch", "throw"):
            return
        origin = args[0]
        now, cpu = time.perf_counter(), time.thread_time()
        dt = now - self._sl_t0
        if dt >= SLICE_MIN_S:
            lab = self._labels.get(id(origin))
            if lab is None:
                lab = self._labels[id(origin)] = _label(origin)
            self.slices.append((self._sl_t0, dt, cpu - self._sl_c0, lab))
        else:
            self.short_slices += 1
        self._sl_t0, self._sl_c0 = now, cpu

    # ------------------------------------------------------------------ calls
    def wrap(self, owner, attr: str, what: str) -> None:
        orig = getattr(owner, attr)
        calls = self.calls

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                calls.append((t0, time.perf_counter() - t0, what))
        setattr(owner, attr, timed)
        self._patched.append((owner, attr, orig))

    def install(self) -> "Probe":
        from tinytownd import logs
        from tinytownd.runtime.agents_service import AgentsService
        from tinytownd.runtime.backlog import BacklogClaims
        from tinytownd.runtime.recovery import Sweeper
        gc.callbacks.append(self._on_gc)
        greenlet.settrace(self._on_switch)
        self.wrap(AgentsService, "beat", "heartbeat pass")
        self.wrap(AgentsService, "ensure", "ensure agents")
        self.wrap(Sweeper, "sweep_once", "sweeper scan")
        self.wrap(BacklogClaims, "claim_for_idle", "backlog claim")
        self.wrap(logs._SinkLogger, "msg", "log write")
        return self

    def uninstall(self) -> None:
        greenlet.settrace(None)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        for owner, attr, orig in reversed(self._patched):
            setattr(owner, attr, orig)

    # ------------------------------------------------------------------ analysis
    def explain(self, samples: list[tuple[float, float]], top_frac: float = 0.01) -> dict:
        """samples: (sent, started) perf_counter pairs. For the slowest `top_frac` of them,
        the time by cause that overlapped their windows (ms, summed and per sample)."""
        lat = sorted(samples, key=lambda s: s[1] - s[0], reverse=True)
        k = max(1, int(len(lat) * top_frac))
        slow = lat[:k]
        causes: dict[str, float] = defaultdict(float)
        hits: dict[str, int] = defaultdict(int)

        def overlap(a0, a1, b0, b1):
            return max(0.0, min(a1, b1) - max(a0, b0))

        gen_label = {0: "gc gen0", 1: "gc gen1", 2: "gc gen2"}
        for s0, s1 in slow:
            seen = set()
            for t0, dt, gen in self.gc:
                o = overlap(s0, s1, t0, t0 + dt)
                if o:
                    lab = gen_label.get(gen, "gc")
                    causes[lab] += o
                    seen.add(lab)
            for t0, dt, cpu, lab in self.slices:
                o = overlap(s0, s1, t0, t0 + dt)
                if o and dt >= 0.001:
                    key = "slice " + lab
                    causes[key] += o
                    seen.add(key)
                    if dt - cpu > 0.001 and not lab.startswith("hub"):
                        causes["  (of which off-CPU: blocked or preempted)"] += \
                            o * (dt - cpu) / dt
            for t0, dt, what in self.calls:
                o = overlap(s0, s1, t0, t0 + dt)
                if o:
                    causes["call " + what] += o
                    seen.add("call " + what)
            for lab in seen:
                hits[lab] += 1
        mean_ms = sum(s1 - s0 for s0, s1 in slow) / len(slow) * 1000
        gc_by_gen: dict[int, list[float]] = defaultdict(list)
        for _t, dt, gen in self.gc:
            gc_by_gen[gen].append(dt * 1000)
        gc_cpu_by_gen: dict[int, list[float]] = defaultdict(list)
        for gen, c in self.gc_cpu:
            gc_cpu_by_gen[gen].append(c * 1000)
        long_slices: dict[str, list[float]] = defaultdict(list)
        slice_cpu: dict[str, list[float]] = defaultdict(list)
        for _t, dt, _c, lab in self.slices:
            if dt >= 0.002:
                long_slices[lab].append(dt * 1000)
                slice_cpu[lab].append(_c * 1000)
        call_stats: dict[str, list[float]] = defaultdict(list)
        for _t, dt, what in self.calls:
            call_stats[what].append(dt * 1000)

        def summary(v):
            v = sorted(v)
            return {"count": len(v), "max_ms": round(v[-1], 2),
                    "p50_ms": round(v[len(v) // 2], 2), "total_ms": round(sum(v), 1)}
        return {
            "slowest": k, "slowest_mean_ms": round(mean_ms, 2),
            "overlap_ms_per_slow_sample": {c: round(v / k * 1000, 2) for c, v in
                                           sorted(causes.items(), key=lambda kv: -kv[1])},
            "slow_samples_hit": dict(sorted(hits.items(), key=lambda kv: -kv[1])),
            "gc": {f"gen{g}": summary(v) for g, v in sorted(gc_by_gen.items())},
            "gc_cpu": {f"gen{g}": summary(v) for g, v in sorted(gc_cpu_by_gen.items())},
            "slices_over_2ms_cpu": {lab: summary(v) for lab, v in
                                    sorted(slice_cpu.items(), key=lambda kv: -sum(kv[1]))},
            "slices_over_2ms": {lab: summary(v) for lab, v in
                                sorted(long_slices.items(), key=lambda kv: -sum(kv[1]))},
            "calls": {w: summary(v) for w, v in call_stats.items()},
            "slices_kept": len(self.slices), "slices_short": self.short_slices,
        }
