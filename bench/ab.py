#!/usr/bin/env python3
"""Two checkouts, interleaved in one run: each round runs the same bench_e2e.py measurement
with checkout A, then with checkout B (then B, A the next round, so neither always goes first),
with each checkout's own venv. Prints every run's JSON line with the load average before it,
then the median of each figure per checkout.

    python bench/ab.py --a /work/wt-core --b . [-r 3] -- cmdcount -n 1000 -w 8
    python bench/ab.py --a /work/wt-core --b . -- tinytownd -n 3000 -w 8

Arguments after `--` go to bench/bench_e2e.py. `--b-args "..."` adds arguments for B only (an
option A's bench_e2e.py does not have, e.g. `--task-events lifecycle`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(checkout: str, args: list[str]) -> dict:
    py = os.path.join(checkout, ".venv", "bin", "python")
    out = subprocess.run([py, os.path.join(checkout, "bench", "bench_e2e.py"), *args],
                         cwd=checkout, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="checkout A (before)")
    ap.add_argument("--b", required=True, help="checkout B (after)")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--b-args", default="", help="extra bench_e2e.py arguments for B only")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    sides = {"A": (os.path.abspath(a.a), args),
             "B": (os.path.abspath(a.b), args + shlex.split(a.b_args))}
    got: dict[str, list[dict]] = {"A": [], "B": []}
    for i in range(a.rounds):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            checkout, sargs = sides[side]
            before = load()
            d = run(checkout, sargs)
            got[side].append(d)
            print(json.dumps({"side": side, "checkout": checkout, "round": i + 1,
                              "load_before": before, "load_after": load(), **d}), flush=True)
    for side in ("A", "B"):
        nums = {}
        for d in got[side]:
            for k, v in d.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    nums.setdefault(k, []).append(v)
        print(json.dumps({"side": side, "checkout": sides[side][0], "median_of": a.rounds,
                          **{k: statistics.median(v) for k, v in nums.items()}}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
