#!/usr/bin/env python3
"""Every tinytownd benchmark in one run, side by side, printed as a table of ratios.

    .venv/bin/python bench/run_all.py [--quick] [-n 5000] [-w 8] [--out FILE] [--skip SECTION,...]

Sections (each system gets private redis-servers on unix sockets in temp dirs, all stopped):
  raw        the raw limit: ../shared/baseline/raw_redis_gevent.py `produce pipe100` (pipelined
             LPUSH) and `consume blpop_per_agent` (one BLPOP loop per agent), gevent + redis-py
  dispatch   bench/bench_dispatch.py: assign_many vs raw pipelined LPUSH, pickup
             latency at 100 agents and 1,000 idle agents
  e2e        N tasks (default 5,000) whose agent CLI is `true`, W agents (default 8): tinytownd
             batch vs RQ SimpleWorker and huey (greenlet) running the same `true` per job, vs the
             fork/exec floor (8 greenlets running `true` N times: gevent.subprocess, and
             posix_spawn for reference); plus tinytownd's cost per task (Redis commands, CPU)
  memory     RSS per idle agent and Redis connections per daemon (1 vs 201 agents)
  persist    the e2e tinytownd batch with appendfsync everysec vs always vs no AOF
  startup    bench/bench_startup.py: redis child, READY and reload latency
  missions   bench/bench_missions.py: mission ticks and completion-to-assign latency
Absolute numbers on a shared 2-core machine are noise; the ratios are measured in the same run.
Raw JSON of every measurement goes to --out (default bench/results/run_all-<time>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
PY = sys.executable
BASELINE = os.environ.get("TT_BASELINE_DIR", os.path.join(os.path.dirname(ROOT), "shared", "baseline"))
SECTIONS = ("raw", "dispatch", "e2e", "memory", "persist", "startup", "missions")


def log(msg: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("MEDIAN "):
            line = line[7:]
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def run(cmd: list[str], *, timeout: float = 1800, env: dict | None = None) -> list[dict]:
    log(" ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {p.stderr[-1500:]}")
    return json_lines(p.stdout)


def e2e(system: str, *extra: str, n: int, w: int) -> dict:
    rows = run([PY, os.path.join(HERE, "bench_e2e.py"), system, "-n", str(n), "-w", str(w),
                *extra])
    return rows[-1]


# ----------------------------------------------------------------------------- sections
def sec_raw(res: dict, a) -> None:
    from peers.lab import RedisLab
    script = os.path.join(BASELINE, "raw_redis_gevent.py")
    with RedisLab(name="raw") as lab:
        prod = run([PY, script, "produce", "--sock", lab.sock, "--modes", "pipe100,single",
                    "-n", str(a.raw_n), "--runs", "1"])
        cons = run([PY, script, "consume", "--sock", lab.sock, "--modes", "blpop_per_agent",
                    "-n", str(a.raw_n // 5), "--runs", "1"])
    med = [r for r in prod + cons if "runs" in r]
    res["raw"] = {r["test"] + "_" + r["mode"]: r for r in med}


def sec_dispatch(res: dict, a) -> None:
    script = os.path.join(HERE, "bench_dispatch.py")
    if not os.path.exists(script):
        res["dispatch"] = {"skipped": "bench/bench_dispatch.py not present"}
        return
    out = {}
    def last(rows):   # the harness' own JSON lines (not log lines that reached stdout)
        return [r for r in rows if "test" in r][-1]
    out["assign"] = last(run([PY, script, "assign", "-n", str(a.raw_n // 2), "--agents", "100"]))
    out["pickup_100"] = last(run([PY, script, "pickup", "--agents", "100", "--rate", "200",
                                  "--duration", "5" if a.quick else "10"]))
    out["idle_1000"] = last(run([PY, script, "idle", "--agents", "1000", "--rate", "200",
                                 "--duration", "5"]))
    res["dispatch"] = out


def median_row(rows: list[dict]) -> dict:
    """The run with the median tasks/s (all runs' rates kept in `runs_tasks_per_s`)."""
    rows = sorted(rows, key=lambda r: r["tasks_per_s"])
    m = dict(rows[(len(rows) - 1) // 2])
    m["runs_tasks_per_s"] = [r["tasks_per_s"] for r in rows]
    return m


def interleaved(systems: list[tuple[str, str, tuple]], repeat: int, n: int, w: int) -> dict:
    """Run every system `repeat` times, round-robin (A B C A B C), so that load from outside
    hits all of them alike; keep the median run of each."""
    got: dict[str, list] = {k: [] for k, _s, _x in systems}
    for _ in range(repeat):
        for key, system, extra in systems:
            got[key].append(e2e(system, *extra, n=n, w=w))
    return {k: median_row(v) for k, v in got.items()}


def sec_e2e(res: dict, a) -> None:
    n, w = a.n, a.w
    out = interleaved([("floor", "floor", ()), ("floor_posix_spawn", "spawn", ()),
                       ("rq", "rq", ()), ("huey", "huey", ()), ("tinytownd", "tinytownd", ())],
                      a.repeat, n, w)
    cn = max(200, n // 10)
    out["cost"] = e2e("cmdcount", n=cn, w=w)
    out["cost_claim"] = e2e("cmdcount", "--variant", "claim", n=cn, w=w)
    res["e2e"] = out


def sec_memory(res: dict, a) -> None:
    res["memory"] = e2e("memory", n=0, w=0)


def sec_persist(res: dict, a) -> None:
    n = a.persist_n or a.n
    res["persist"] = interleaved([(pol, "tinytownd", ("--appendfsync", pol))
                                  for pol in ("off", "everysec", "always")], a.repeat, n, a.w)


def sec_startup(res: dict, a) -> None:
    script = os.path.join(HERE, "bench_startup.py")
    if not os.path.exists(script):
        res["startup"] = {"skipped": "bench/bench_startup.py not present"}
        return
    res["startup"] = run([PY, script, "--runs", "3" if a.quick else "5", "--json"])[-1]


def sec_missions(res: dict, a) -> None:
    script = os.path.join(HERE, "bench_missions.py")
    if not os.path.exists(script):
        res["missions"] = {"skipped": "bench/bench_missions.py not present"}
        return
    args = ["--items", "2000", "--chain", "100"] if a.quick else []
    res["missions"] = run([PY, script, *args, "--json"])[-1]


# ----------------------------------------------------------------------------- table
def ratio(x, y):
    try:
        return x / y if x is not None and y else None
    except TypeError:
        return None


def table(res: dict) -> list[tuple]:
    """Rows: (section, measure, value, reference, ratio, goal, met)."""
    rows: list[tuple] = []

    def add(sec, what, val, ref="", r=None, goal="", met=None, fmt="{:,.0f}"):
        v = "-" if val is None else (fmt.format(val) if isinstance(val, (int, float)) else str(val))
        rows.append((sec, what, v, ref, "" if r is None else f"{r:.2f}x", goal,
                     "" if met is None else ("yes" if met else "NO")))

    raw = res.get("raw", {})
    pipe = raw.get("produce_pipe100", {}).get("msgs_per_s")
    single = raw.get("produce_single", {}).get("msgs_per_s")
    blpop = raw.get("consume_blpop_per_agent", {}).get("msgs_per_s")
    add("raw", "pipelined LPUSH msg/s (pipe100)", pipe)
    add("raw", "unpipelined LPUSH msg/s", single)
    add("raw", "per-agent BLPOP loop msg/s (100 agents)", blpop)
    d = res.get("dispatch", {})
    if "assign" in d:
        x = d["assign"]
        r = ratio(x.get("town_assign_many_per_s"), pipe)
        add("dispatch", "Town.assign_many tasks/s", x.get("town_assign_many_per_s"),
            "raw pipe100 (this run)", r, ">= 0.3x", r is not None and r >= 0.3)
        add("dispatch", "  (same, vs its own raw LPUSH of the payload)",
            x.get("town_assign_many_per_s"), f"{x.get('raw_lpush_pipe100_per_s'):,}/s",
            x.get("ratio"), ">= 0.3x", (x.get("ratio") or 0) >= 0.3)
    for key, label, goal in (("pickup_100", "pickup p99 ms, 100 agents @200/s", 10),
                             ("idle_1000", "pickup p99 ms, 1,000 idle agents @200/s", 20)):
        if key in d:
            x = d[key]
            add("dispatch", label, x.get("p99_ms"), f"p50 {x.get('p50_ms')} max {x.get('max_ms')}",
                None, f"<= {goal} ms", (x.get("p99_ms") or 1e9) <= goal, fmt="{:.2f}")
    if "idle_1000" in d:
        x = d["idle_1000"]
        add("dispatch", "RSS with 1,000 idle agents (MiB)", x.get("rss_idle_mib"), "", None,
            "<= 150 MB", (x.get("rss_idle_mib") or 1e9) <= 143, fmt="{:.1f}")
    e = res.get("e2e", {})
    if e:
        tt = e["tinytownd"]["tasks_per_s"]
        for key, label, goal, need in (("rq", "RQ SimpleWorker x8", ">= 2x RQ", 2.0),
                                       ("huey", "huey greenlet -w 8", ">= 1x huey", 1.0),
                                       ("floor", "fork/exec floor (gevent.subprocess)",
                                        ">= 0.7x floor", 0.7),
                                       ("floor_posix_spawn", "fork/exec floor (posix_spawn)", "", None)):
            ref = e[key]["tasks_per_s"]
            r = ratio(tt, ref)
            runs = e[key].get("runs_tasks_per_s")
            add("e2e", f"tinytownd batch tasks/s vs {label}", tt, f"{ref:,.0f}/s"
                + (f" (runs {', '.join(f'{x:.0f}' for x in runs)})" if runs and len(runs) > 1
                   else ""), r, goal, None if need is None else r >= need)
        runs = e["tinytownd"].get("runs_tasks_per_s")
        if runs and len(runs) > 1:
            add("e2e", "  (tinytownd runs, tasks/s)", ", ".join(f"{x:.0f}" for x in runs))
        for key, label in (("cost", "as shipped"),
                           ("cost_claim", "runtime backlog claim instead of batch dispatch")):
            if key in e:
                c = e[key]
                add("e2e", f"tinytownd per task ({label}): tasks/s | py CPU ms | Redis cmds",
                    c["tasks_per_s"], f"{c['py_cpu_ms_per_task']} ms | "
                    f"{c['redis_cmds_per_task']} cmds", ratio(c["tasks_per_s"],
                                                             e["cost"]["tasks_per_s"]),
                    "", None, fmt="{:,.1f}")
    m = res.get("memory", {})
    if m:
        add("memory", "RSS per idle agent (KiB)", m["rss_kib_per_idle_agent"],
            "raw parked BLPOP: 54 KiB (shared/baseline)", ratio(m["rss_kib_per_idle_agent"], 54),
            "<= 64 KiB", m["rss_kib_per_idle_agent"] <= 64, fmt="{:.1f}")
        add("memory", f"Redis connections per daemon ({m['agents_big']} agents)",
            m["redis_connections_big"], f"{m['agents_small']} agent: "
            f"{m['redis_connections_small']}", None, f"~1 per agent "
            f"({m['redis_connections_per_agent']})", None)
    p = res.get("persist", {})
    if p:
        base = p["off"]["tasks_per_s"]
        for pol in ("off", "everysec", "always"):
            runs = p[pol].get("runs_tasks_per_s") or []
            add("persist", f"tinytownd batch tasks/s, appendfsync {pol}", p[pol]["tasks_per_s"],
                "no AOF" + (f" (runs {', '.join(f'{x:.0f}' for x in runs)})" if len(runs) > 1
                            else ""), ratio(p[pol]["tasks_per_s"], base), "", None,
                fmt="{:,.1f}")
    s = res.get("startup", {})
    if "results" in s:
        goals = s.get("goals_ms", {})
        for k, v in s["results"].items():
            g = goals.get(k)
            add("startup", k, v["median"], f"min {v['min']} max {v['max']}", None,
                f"<= {g} ms" if g else "", None if g is None else v["median"] <= g, fmt="{:.1f}")
    mi = res.get("missions", {})
    for k, goal in (("pure_tick", None), ("full_tick", 200), ("completion_to_next_assign", 50)):
        if isinstance(mi.get(k), dict):
            v = mi[k]
            val = v.get("p99_ms") if k == "completion_to_next_assign" else \
                v.get("p50_ms", v.get("warm_p50_ms"))
            add("missions", k + (" p99 ms" if k == "completion_to_next_assign" else " p50 ms"),
                val, f"items {v.get('items')}", None, f"<= {goal} ms" if goal else "",
                None if goal is None or val is None else val <= goal, fmt="{:.1f}")
    return rows


def render(rows: list[tuple]) -> str:
    head = ("section", "measure", "value", "reference", "ratio", "goal", "met")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    lines = ["| " + fmt.format(*head) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + fmt.format(*map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def versions() -> dict:
    import gevent
    import redis
    out = {"python": platform.python_version(), "gevent": gevent.__version__,
           "redis_py": redis.__version__, "cpus": os.cpu_count(), "kernel": platform.release()}
    for mod in ("rq", "huey", "greenlet", "hiredis"):
        try:
            from importlib.metadata import version
            out[mod] = version(mod)
        except Exception:
            pass
    try:
        out["redis_server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.split()[2].split("=")[1]
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except Exception:
        pass
    try:
        out["load_avg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="e2e tasks (default 5000)")
    ap.add_argument("-w", type=int, default=8, help="e2e agents/workers (default 8)")
    ap.add_argument("--persist-n", type=int, default=0, help="tasks for the persistence runs "
                                                               "(default: -n)")
    ap.add_argument("--raw-n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="e2e and persistence runs per system, interleaved; the median is kept "
                         "(default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test of the suite)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip")
    ap.add_argument("--only", default="", help="comma list of sections to run")
    ap.add_argument("--out", help="raw results JSON (default bench/results/run_all-<time>.json)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.raw_n, a.persist_n, a.repeat = min(a.n, 500), 20_000, a.persist_n or 300, 1
    skip = set(filter(None, a.skip.split(",")))
    only = set(filter(None, a.only.split(",")))
    res: dict = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "argv": sys.argv[1:], "n": a.n, "workers": a.w, **versions()}}
    t0 = time.monotonic()
    for name in SECTIONS:
        if name in skip or (only and name not in only):
            continue
        log(f"== {name}")
        try:
            globals()[f"sec_{name}"](res, a)
        except Exception as e:  # one broken section does not hide the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} failed: {e}")
    res["meta"]["wall_s"] = round(time.monotonic() - t0, 1)
    out = a.out or os.path.join(HERE, "results", time.strftime("run_all-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(render(table(res)))
    errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    for k, v in errors.items():
        print(f"\n{k}: ERROR {v}")
    print(f"\nraw results: {out}  (wall {res['meta']['wall_s']} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
