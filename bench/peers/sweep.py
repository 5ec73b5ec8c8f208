#!/usr/bin/env python3
"""Which configuration of each peer is its strongest: every candidate, interleaved, median of R.

    python bench/peers/sweep.py [-n 1000] [-r 3] [--only dramatiq,celery] [--appendfsync everysec]

Each candidate is one `bench/bench_e2e.py SYSTEM --opt ...` run; the rounds go A B C ... A B C
so load from outside hits every candidate alike. Prints one line per candidate (median and every
run, tasks/s) and the JSON of all runs to --out. The defaults of bench/peers/peer_*.py are the
winners of this sweep (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CANDIDATES: list[tuple[str, dict]] = [
    ("dramatiq", {"t": "4", "worker_timeout": "1000"}),
    ("dramatiq", {"t": "8", "worker_timeout": "1000"}),
    ("dramatiq", {"t": "4", "worker_timeout": "100"}),
    ("dramatiq", {"t": "8", "worker_timeout": "100"}),
    ("dramatiq-gevent", {"t": "4"}),
    ("dramatiq-gevent", {"t": "8"}),
    ("dramatiq-gevent", {"t": "32"}),
    ("dramatiq", {"p": "1", "t": "8"}),
    ("celery", {"prefetch": "4"}),
    ("celery", {"prefetch": "64"}),
    ("celery", {"prefetch": "64", "O": "default"}),
    ("celery", {"prefetch": "64", "lean": "0"}),
    ("celery", {"prefetch": "64", "pool": "threads"}),
    ("celery-gevent", {"c": "8"}),
    ("celery-gevent", {"c": "32"}),
    ("huey", {"k": "thread"}),
    ("huey", {"k": "thread", "w": "16"}),
    ("huey", {"k": "process"}),
    ("huey", {"k": "greenlet"}),
    ("huey", {"k": "process", "w": "16"}),
    ("rq", {}),
    ("rq", {"worker": "rq.worker.Worker"}),
    ("rq", {"pool": "1"}),
]


def label(system: str, opts: dict) -> str:
    return system + ("[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]" if opts else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of systems")
    ap.add_argument("--appendfsync", default="everysec")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    cands = [(s, o) for s, o in CANDIDATES if not only or s in only]
    runs: dict[str, list[dict]] = {label(s, o): [] for s, o in cands}
    for r in range(a.repeat):
        for system, opts in cands:
            n = max(100, a.n // 5) if system.endswith("-gevent") else a.n   # ~30-150 jobs/s
            cmd = [sys.executable, os.path.join(BENCH, "bench_e2e.py"), system, "-n", str(n),
                   "-w", str(a.w), "--appendfsync", a.appendfsync]
            for k, v in opts.items():
                cmd += ["--opt", f"{k}={v}"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if p.returncode != 0:
                print(f"{label(system, opts)}: FAILED {p.stderr[-500:]}", file=sys.stderr)
                continue
            row = json.loads(p.stdout.strip().splitlines()[-1])
            runs[label(system, opts)].append(row)
            print(f"[round {r + 1}] {label(system, opts):45s} {row['tasks_per_s']:8.1f}/s "
                  f"load {row.get('load_start')}", file=sys.stderr, flush=True)
    print(f"\n{'candidate':45s} {'median':>8s}  runs (tasks/s)   cpu ms/task (median run)")
    for key, rows in runs.items():
        if not rows:
            print(f"{key:45s} {'-':>8s}")
            continue
        rates = sorted(r["tasks_per_s"] for r in rows)
        med = statistics.median(rates)
        mid = sorted(rows, key=lambda r: r["tasks_per_s"])[(len(rows) - 1) // 2]
        print(f"{key:45s} {med:8.1f}  {', '.join(f'{x:.0f}' for x in rates):16s} "
              f"{mid.get('cpu_ms_per_task')}")
    out = a.out or os.path.join(BENCH, "results", time.strftime("sweep-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(runs, f, indent=1)
    print(f"\nraw: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
