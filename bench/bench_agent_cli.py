#!/usr/bin/env python3
"""What output parsing and usage accounting cost per task: the e2e batch with an agent CLI that
prints a claude-json result (`output: claude-json`: parsed, usage summed on the task, the agent
and the batch) against the same CLI printing plain text (`output: text`), in the same run.

    python bench/bench_agent_cli.py [-n 2000] [-w 8] [--runs 3]
    python bench/bench_agent_cli.py --micro     # the same work in-process, µs per task

Both CLIs are `cat FILE` (one fork/exec each, like `true`); FILE is the claude-json fixture of
the tests (tests/fixtures/agent_cli/claude_success.json) or its `result` text. Runs alternate
(text json, json text, text json, ...) so load changes and order hit both; each run is `tinytownd batch` embedded
(its own redis-server, W agents), the rate is the summary's completed / wall_time_s. Prints one
JSON line per run and a last line with the medians and their ratio (goal: json >= 0.9 x text).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "agent_cli", "claude_success.json")


def write_batch(path: str, n: int, out_file: str, fmt: str) -> None:
    data = {"agent_clis": {"c": {"command": f"cat {out_file}", "output": fmt}},
            "tasks": [{"id": f"t{i}", "description": "noop"} for i in range(n)]}
    with open(path, "w") as f:
        json.dump(data, f)


def one(n: int, w: int, fmt: str, d: str, i: int) -> dict:
    out_file = os.path.join(d, "out.json" if fmt == "claude-json" else "out.txt")
    bf = os.path.join(d, f"batch-{fmt}-{i}.yaml")
    write_batch(bf, n, out_file, fmt)
    summ = os.path.join(d, f"summary-{fmt}-{i}.json")
    cmd = [os.path.join(BIN, "tinytownd"), "batch", bf, "--dir", os.path.join(d, f"b-{fmt}-{i}"),
           "--cli", "c", "--agents", str(w), "--progress", "none", "--summary", summ,
           "--id", f"bench-{fmt}-{i}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=d)
    total = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"tinytownd batch exit {p.returncode}: {p.stderr[-2000:]}"
                         f"{p.stdout[-2000:]}")
    s = json.load(open(summ))
    t = s["totals"]
    row = {"output": fmt, "n": n, "workers": w, "secs": s["wall_time_s"],
           "tasks_per_s": round(t["completed"] / s["wall_time_s"], 1),
           "command_wall_s": round(total, 3), "completed": t["completed"],
           "cost_usd": t["cost_usd"], "input_tokens": t["input_tokens"],
           "load1": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def micro(number: int = 20000) -> dict:
    """Per task, in-process: claude-json (feed + parse + verdict + usage-file probe + the usage
    argument of round_ok.lua) against text (verdict + usage-file probe); min of 5 repeats."""
    import timeit

    sys.path.insert(0, ROOT)
    from tinytownd import config
    from tinytownd.runtime.agent_cli import output, report, usage
    from tinytownd.runtime.agent_cli.accounting import usage_arg
    from tinytownd.runtime.runner import CliResult

    data = open(FIXTURE, "rb").read()
    res = CliResult(exit_code=0, timed_out=False, killed=False, duration_s=1.0, pid=1,
                    output=data.decode())
    claude, plain = config.BUILTIN_CLIS["claude"], config.AgentCli(command="x")
    nofile = "/nonexistent/usage.json"

    def structured():
        c = output.collector("claude-json")
        c.feed(data)
        v = report.judge(res, claude, c.parse(), usage.from_file(nofile), time.time())
        usage_arg(v.usage)

    def text():
        report.judge(res, plain, None, usage.from_file(nofile), time.time())
    out = {"micro": True}
    for name, fn in (("claude_json_us", structured), ("text_us", text)):
        out[name] = round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 1)
    out["load"] = os.getloadavg()
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    if "--micro" in sys.argv:
        micro()
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-w", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ttb-cli-", dir="/tmp") as d:
        with open(FIXTURE) as f:
            doc = json.load(f)
        with open(os.path.join(d, "out.json"), "w") as f:
            json.dump(doc, f)
        with open(os.path.join(d, "out.txt"), "w") as f:
            f.write(doc["result"] + "\n")
        rows = {"text": [], "claude-json": []}
        for i in range(a.runs):        # ABBA: which goes first alternates
            for fmt in (("text", "claude-json") if i % 2 == 0 else ("claude-json", "text")):
                rows[fmt].append(one(a.n, a.w, fmt, d, i))
    med = {k: statistics.median(r["tasks_per_s"] for r in v) for k, v in rows.items()}
    bad = [r for r in rows["claude-json"] if r["completed"] != a.n or
           abs(r["cost_usd"] - a.n * doc["total_cost_usd"]) > 1e-6 * a.n]
    print(json.dumps({"summary": True, "n": a.n, "workers": a.w, "runs": a.runs,
                      "text_tasks_per_s": med["text"], "json_tasks_per_s": med["claude-json"],
                      "ratio": round(med["claude-json"] / med["text"], 3),
                      "accounting_ok": not bad, "load": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
