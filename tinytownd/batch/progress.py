"""Batch progress and summaries: the live terminal bar, JSON progress lines, the final table.

Pure (no Redis, no gevent): `tinytownd.batch` feeds it counts and task rows.

* `Counts`      — done / failed / running / queued of one batch at one instant.
* `TtyBar`      — a one-line bar redrawn in place (at most 10 times a second) on a terminal:
                  `[#####-----]  52/100  ok 50  failed 2  running 8  queued 40  12.5/s  ETA 0:04`.
* `JsonProgress`— when stdout is not a terminal: one structlog JSON object per line
                  (`timestamp`, `level`, `event`="batch.progress", `logger`="tinytownd.batch", the
                  counts, `rate_per_s`, `eta_s`), at most once per `interval_s` and on every finish.
                  It has its own structlog pipeline bound to the stream, so the daemon's log sink
                  (a file in embedded mode) does not swallow it.
* `Quiet`       — `--progress none`: nothing while the batch runs.
* `make_reporter(mode)` — the one factory: `--progress auto|bar|json|none`.
  Every reporter also writes the batch's first line (`start`) and its end (`summary`): plain text
  for a person, or the `batch.start` / `batch.summary` JSON lines with the table on stderr.
* `summarize()` — the `--summary` JSON document; `render_table()` — the human summary.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, TextIO


@dataclass
class Counts:
    total: int = 0
    completed: int = 0
    failed: int = 0          # failed + cancelled
    running: int = 0
    queued: int = 0          # pending + assigned (waiting for an agent to start it)

    @property
    def done(self) -> int:
        return self.completed + self.failed

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def fmt_duration(secs: float | None) -> str:
    if secs is None or secs != secs or secs == math.inf:
        return "--:--"
    secs = int(round(secs))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


class _Rate:
    """Completion rate over a sliding window (falls back to the whole run at the start)."""

    def __init__(self, window_s: float = 10.0):
        self.window = window_s
        self.samples: list[tuple[float, int]] = []

    def add(self, now: float, done: int) -> float:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.pop(0)
        t0, d0 = self.samples[0]
        dt = now - t0
        return (done - d0) / dt if dt > 0 else 0.0


class Reporter:
    """Base: `update(counts)` whenever counts may have changed; `finish(counts)` once."""

    def __init__(self, stream: TextIO | None = None, *, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.clock = clock
        self.t0 = clock()
        self._rate = _Rate()
        self.rate = 0.0
        self.start_done: int | None = None

    def _measure(self, c: Counts) -> tuple[float, float | None]:
        now = self.clock()
        if self.start_done is None:
            self.start_done = c.done
        self.rate = self._rate.add(now, c.done)
        remaining = c.total - c.done
        if remaining <= 0:
            eta = 0.0
        elif self.rate > 0:
            eta = remaining / self.rate
        else:
            eta = None
        return now - self.t0, eta

    def update(self, c: Counts) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self, c: Counts) -> None:
        self.update(c)

    def note(self, text: str) -> None:
        """A one-off line (an interruption, a drain)."""

    def start(self, text: str, **fields: Any) -> None:
        """The first line: `text` for a person, `fields` for a machine."""
        self.note(text)

    def summary(self, table: str, **fields: Any) -> None:
        """The end: the human summary table, `fields` for a machine."""
        _write(self.stream, table + "\n")


class Quiet(Reporter):
    """`--progress none`: no progress; the first line goes to stderr, the table to the stream."""

    def update(self, c: Counts) -> None:
        pass

    def start(self, text: str, **fields: Any) -> None:
        _write(sys.stderr, text + "\n")


class TtyBar(Reporter):
    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, *, min_interval_s: float = 0.1, **kw):
        super().__init__(stream, **kw)
        self.min_interval = min_interval_s
        self._last = -1e9
        self._last_len = 0

    def line(self, c: Counts, eta: float | None) -> str:
        frac = c.done / c.total if c.total else 1.0
        filled = int(round(frac * self.WIDTH))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (f"[{bar}] {c.done:>{len(str(c.total))}}/{c.total}  ok {c.completed}  "
                f"failed {c.failed}  running {c.running}  queued {c.queued}  "
                f"{self.rate:.1f}/s  ETA {fmt_duration(eta)}")

    def update(self, c: Counts, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        _, eta = self._measure(c)
        text = self.line(c, eta)
        pad = max(0, self._last_len - len(text))
        self._last_len = len(text)
        try:
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def finish(self, c: Counts) -> None:
        self.update(c, force=True)
        try:
            self.stream.write("\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def note(self, text: str) -> None:
        try:
            if self._last_len:
                self.stream.write("\r" + " " * self._last_len + "\r")
                self._last_len = 0
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _json_logger(stream: TextIO, **context: Any):
    import structlog

    return structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.JSONRenderer(separators=(",", ":")),
        ],
    ).bind(logger="tinytownd.batch", **context)


class JsonProgress(Reporter):
    def __init__(self, stream: TextIO | None = None, *, interval_s: float = 1.0,
                 context: dict | None = None, **kw):
        super().__init__(stream, **kw)
        self.interval = interval_s
        self._last = -1e9
        self._last_counts: tuple | None = None
        self.log = _json_logger(self.stream, **(context or {}))

    def update(self, c: Counts, *, force: bool = False) -> None:
        now = self.clock()
        key = (c.total, c.completed, c.failed, c.running, c.queued)
        if not force and (now - self._last < self.interval or key == self._last_counts):
            return
        self._last, self._last_counts = now, key
        elapsed, eta = self._measure(c)
        self.log.info("batch.progress", total=c.total, done=c.done, completed=c.completed,
                      failed=c.failed, running=c.running, queued=c.queued,
                      elapsed_s=round(elapsed, 3), rate_per_s=round(self.rate, 2),
                      eta_s=None if eta is None else round(eta, 1))

    def finish(self, c: Counts) -> None:
        self.update(c, force=True)

    def note(self, text: str, **fields: Any) -> None:
        self.log.info(text, **fields)

    def start(self, text: str, **fields: Any) -> None:
        self.log.info("batch.start", **fields)

    def summary(self, table: str, **fields: Any) -> None:
        """The `batch.summary` line on the stream; the table goes to stderr."""
        self.log.info("batch.summary", **fields)
        _write(sys.stderr, table + "\n")


def make_reporter(mode: str = "auto", stream: TextIO | None = None, *,
                  context: dict | None = None) -> Reporter:
    """The reporter of `--progress MODE`: `bar`, `json`, `none`, or `auto` (the bar on a
    terminal, JSON lines otherwise). `context` is bound to every JSON line."""
    stream = stream or sys.stdout
    if mode == "auto":
        try:
            mode = "bar" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            mode = "json"
    if mode == "bar":
        return TtyBar(stream)
    if mode == "json":
        return JsonProgress(stream, context=context)
    return Quiet(stream)


# ----------------------------------------------------------------------------- summary
def summarize(batch_id: str, rows: Iterable[dict], *, wall_s: float,
              extra: dict | None = None) -> dict:
    """The --summary document. `rows`: dicts with id task_id state attempts agent duration_s result."""
    tasks = list(rows)
    totals = {"total": len(tasks), "completed": 0, "failed": 0, "cancelled": 0,
              "running": 0, "queued": 0}
    for t in tasks:
        st = t.get("state") or "pending"
        if st in ("pending", "assigned"):
            totals["queued"] += 1
        elif st in totals:
            totals[st] += 1
        else:
            totals["queued"] += 1
    durs = [t["duration_s"] for t in tasks
            if t.get("state") == "completed" and t.get("duration_s") is not None]
    all_durs = [t["duration_s"] for t in tasks if t.get("duration_s") is not None]
    p50, p95 = percentile(durs or all_durs, 50), percentile(durs or all_durs, 95)
    totals.update(usage_totals(tasks))
    doc = {
        "batch_id": batch_id,
        "ok": totals["completed"] == totals["total"],
        "totals": totals,
        "wall_time_s": round(wall_s, 3),
        "throughput_per_s": round(totals["completed"] / wall_s, 2) if wall_s > 0 else None,
        "duration_p50_s": None if p50 is None else round(p50, 3),
        "duration_p95_s": None if p95 is None else round(p95, 3),
        "attempts_total": sum(int(t.get("attempts") or 0) for t in tasks),
        "tasks": tasks,
    }
    if extra:
        doc.update(extra)
    return doc


USAGE_SUMMED = ("cost_usd", "input_tokens", "output_tokens", "cached_tokens",
                "cache_write_tokens", "turns")


def usage_totals(rows: Iterable[dict]) -> dict:
    """The sums of the rows' usage (cost_usd, input_tokens, …): 0 for what no row reported."""
    out: dict = {k: 0 for k in USAGE_SUMMED}
    for r in rows:
        for k in USAGE_SUMMED:
            v = r.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] += v
    out["cost_usd"] = round(float(out["cost_usd"]), 6)
    return out


def usage_line(t: dict) -> str:
    """`cost $0.1234, 1200 in / 340 out / 800 cached tokens` ('' when nothing was reported)."""
    parts = []
    if t.get("cost_usd"):
        parts.append(f"cost ${t['cost_usd']:.4f}")
    tok = [f"{t[k]} {w}" for k, w in (("input_tokens", "in"), ("output_tokens", "out"),
                                      ("cached_tokens", "cached")) if t.get(k)]
    if tok:
        parts.append(" / ".join(tok) + " tokens")
    return ", ".join(parts)


def _cell(v: Any, width: int) -> str:
    s = "" if v is None else str(v)
    s = s.replace("\n", " ").replace("\r", " ")
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


def render_table(summary: dict, *, max_rows: int = 20) -> str:
    """The human summary: a totals line, then failed tasks first, then the rest (capped)."""
    t = summary["totals"]
    lines = [
        f"batch {summary['batch_id']}: {t['completed']}/{t['total']} completed, "
        f"{t['failed']} failed" + (f", {t['cancelled']} cancelled" if t.get("cancelled") else "")
        + (f", {t['running'] + t['queued']} unfinished" if t['running'] + t['queued'] else "")
        + f" in {summary['wall_time_s']:.1f}s"
        + (f" ({summary['throughput_per_s']}/s)" if summary.get("throughput_per_s") else ""),
        f"task duration p50 {_fmt_s(summary.get('duration_p50_s'))}  "
        f"p95 {_fmt_s(summary.get('duration_p95_s'))}  attempts {summary.get('attempts_total', 0)}",
    ]
    if usage_line(t):
        lines.append(usage_line(t))
    tasks = summary["tasks"]
    if not tasks:
        return "\n".join(lines)
    order = {"failed": 0, "cancelled": 1, "running": 2, "assigned": 3, "pending": 4, "completed": 5}
    rows = sorted(tasks, key=lambda r: order.get(r.get("state") or "pending", 4))
    shown = rows[:max_rows]
    costs = any("cost_usd" in r for r in tasks)   # the COST column, when a CLI reports one
    header = ("ID", "STATE", "TRIES", "AGENT", "SECS") + (("COST",) if costs else ()) + \
        ("RESULT",)
    widths = [max(2, min(24, max(len(str(r.get("id"))) for r in shown))), 9, 5,
              max(5, min(20, max(len(str(r.get("agent") or "")) for r in shown))), 7] + \
        ([9] if costs else []) + [50]
    branches = any(r.get("base") for r in tasks)      # workspaces on: BRANCH and its diffstat
    if branches:
        header = header[:5] + ("BRANCH", "CHANGES") + header[5:]
        widths[5:5] = [max(6, min(40, max(len(str(r.get("branch") or "-")) for r in shown))), 11]
        widths[-1] = 36
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines.append("")
    lines.append(fmt.format(*header).rstrip())
    for r in shown:
        cells = [_cell(r.get("id"), widths[0]), _cell(r.get("state"), widths[1]),
                 _cell(r.get("attempts"), widths[2]), _cell(r.get("agent") or "-", widths[3]),
                 _cell("-" if r.get("duration_s") is None else f"{r['duration_s']:.2f}",
                       widths[4])]
        if branches:
            cells += [_cell(r.get("branch") or "-", widths[5]), _cell(diffstat(r), widths[6])]
        if costs:
            cells.append(_cell(f"${r['cost_usd']:.4f}" if "cost_usd" in r else "-", 9))
        cells.append(_cell(r.get("result") or "", widths[-1]))
        lines.append(fmt.format(*cells).rstrip())
    if len(rows) > len(shown):
        lines.append(f"… {len(rows) - len(shown)} more (all in --summary JSON)")
    return "\n".join(lines)


def diffstat(row: dict) -> str:
    """`3f +12 -4` (files, insertions, deletions of the task's branch), `-` without changes."""
    if not row.get("files_changed"):
        return "-"
    return f"{row['files_changed']}f +{row.get('insertions') or 0} -{row.get('deletions') or 0}"


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
