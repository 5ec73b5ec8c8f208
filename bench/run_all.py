#!/usr/bin/env python3
"""Every tinytownd benchmark in one run, side by side, printed as a table of ratios.

    .venv/bin/python bench/run_all.py [--quick] [-n 5000] [-w 8] [--out FILE] [--skip SECTION,...]

Sections (each system gets private redis-servers on unix sockets in temp dirs, all stopped):
  raw        the raw limit: ../shared/baseline/raw_redis_gevent.py `produce pipe100` (pipelined
             LPUSH) and `consume blpop_per_agent` (one BLPOP loop per agent), gevent + redis-py
  dispatch   bench/bench_dispatch.py: assign_many vs raw pipelined LPUSH, pickup
             latency at 100 agents and 1,000 idle agents
  e2e        N jobs (default 5,000) that each run `sh -c true`, W agents (default 8): tinytownd
             batch (AOF everysec, its default) vs dramatiq, Celery prefork, huey, RQ and the
             gevent variants of dramatiq and Celery (bench/peers/, each on its own redis-server
             with the same AOF policy), vs the posix_spawn floor (8 greenlets spawning
             `sh -c true` N times); interleaved, R rounds, median and every run, with the load
             average and the CPU split of each run; plus tinytownd's cost per task (Redis
             commands, CPU)
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
    """The run with the median tasks/s (all runs kept in `runs`, in run order)."""
    srt = sorted(rows, key=lambda r: r["tasks_per_s"])
    m = dict(srt[(len(srt) - 1) // 2])
    m["runs_tasks_per_s"] = [r["tasks_per_s"] for r in srt]
    m["runs"] = rows
    return m


def interleaved(systems: list[tuple[str, str, tuple, int]], repeat: int, w: int) -> dict:
    """Run every system `repeat` times, round-robin (A B C A B C), so that load from outside
    hits all of them alike; keep every run and point at the median one. A system that fails a
    run is reported with the error (the others go on)."""
    got: dict[str, list] = {k: [] for k, _s, _x, _n in systems}
    errors: dict[str, list] = {}
    for rnd in range(repeat):
        for key, system, extra, n in systems:
            try:
                row = e2e(system, *extra, n=n, w=w)
            except Exception as e:      # noqa: BLE001 - one broken peer must not end the run
                errors.setdefault(key, []).append(f"round {rnd + 1}: {e}"[:600])
                log(f"{key} round {rnd + 1} failed: {e}")
                continue
            row["round"] = rnd + 1
            got[key].append(row)
            log(f"  {key:16s} {row['tasks_per_s']:8.1f}/s  load {row.get('load_start')}")
    out = {k: median_row(v) for k, v in got.items() if v}
    for k, errs in errors.items():
        out.setdefault(k, {})["errors"] = errs
    return out


# the systems of the e2e section: (key, bench_e2e.py system, extra args, share of -n). Each
# peer as its docs recommend for throughput; where two configurations were close in
# bench/peers/sweep.py both run (see BENCHMARKS.md, "Peer configurations").
E2E_SYSTEMS = (("tinytownd", "tinytownd", (), 1.0),
               ("dramatiq", "dramatiq", (), 1.0),                       # -p 2 -t 4
               ("dramatiq-t8", "dramatiq", ("--opt", "t=8"), 1.0),      # its default threads
               ("celery", "celery", (), 1.0),
               ("huey", "huey", (), 1.0),                               # -k thread -w 8
               ("huey-process", "huey", ("--opt", "k=process", "--opt", "w=16"), 1.0),
               ("rq", "rq", (), 1.0),
               ("dramatiq-gevent", "dramatiq-gevent", (), 0.1),   # ~30-150 jobs/s: fewer jobs
               ("celery-gevent", "celery-gevent", (), 0.1),
               ("floor_posix_spawn", "spawn", (), 1.0))
STRONG_PEERS = ("dramatiq", "dramatiq-t8", "celery", "huey", "huey-process")   # >= 1.5x the
#                                                                    fastest of these


def sec_e2e(res: dict, a) -> None:
    n, w = a.n, a.w
    systems = [(k, s, x, max(100, int(n * share))) for k, s, x, share in E2E_SYSTEMS]
    out = interleaved(systems, a.repeat, w)
    cn = max(200, n // 10)
    for key, extra in (("cost", ()), ("cost_claim", ("--variant", "claim"))):
        try:
            out[key] = e2e("cmdcount", *extra, n=cn, w=w)
        except Exception as e:      # noqa: BLE001
            out[key] = {"error": str(e)[:600]}
    res["e2e"] = out


def sec_memory(res: dict, a) -> None:
    res["memory"] = e2e("memory", n=0, w=0)


def sec_persist(res: dict, a) -> None:
    n = a.persist_n or a.n
    res["persist"] = interleaved([(pol, "tinytownd", ("--appendfsync", pol), n)
                                  for pol in ("off", "everysec", "always")], a.repeat, a.w)


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
                             ("idle_1000", "pickup p99 ms, 1,000 idle agents @200/s", 15)):
        if key in d:
            x = d[key]
            add("dispatch", label, x.get("p99_ms"), f"p50 {x.get('p50_ms')} max {x.get('max_ms')}"
                + (f" load {x['load_start'][0]:.2f}" if x.get("load_start") else ""),
                None, f"<= {goal} ms", (x.get("p99_ms") or 1e9) <= goal, fmt="{:.2f}")
    if "idle_1000" in d:
        x = d["idle_1000"]
        add("dispatch", "RSS with 1,000 idle agents (MiB)", x.get("rss_idle_mib"), "", None,
            "<= 150 MB", (x.get("rss_idle_mib") or 1e9) <= 143, fmt="{:.1f}")
    e = res.get("e2e", {})
    if e.get("tinytownd", {}).get("tasks_per_s"):
        tt = e["tinytownd"]["tasks_per_s"]

        def runs_txt(key):
            rr = e.get(key, {}).get("runs_tasks_per_s") or []
            return f"runs {', '.join(f'{x:.0f}' for x in rr)}" if rr else ""

        def per_round(ref_keys):
            """tinytownd's rate / the best reference's rate, round by round."""
            by_round: dict[int, dict[str, float]] = {}
            for key in ("tinytownd", *ref_keys):
                for r in e.get(key, {}).get("runs", []):
                    by_round.setdefault(r["round"], {})[key] = r["tasks_per_s"]
            out = []
            for rnd in sorted(by_round):
                got = by_round[rnd]
                refs = [got[k] for k in ref_keys if k in got]
                if "tinytownd" in got and refs:
                    out.append(got["tinytownd"] / max(refs))
            return out

        strong = [k for k in STRONG_PEERS if e.get(k, {}).get("tasks_per_s")]
        best = max(strong, key=lambda k: e[k]["tasks_per_s"]) if strong else None
        add("e2e", "tinytownd batch tasks/s (AOF everysec), median", tt, runs_txt("tinytownd"))
        for label, refs, goal, need in (
                ("fastest of dramatiq/celery/huey (any config)", [best] if best else [], ">= 1.5x", 1.5),
                ("RQ", ["rq"], ">= 2.5x", 2.5),
                ("posix_spawn floor", ["floor_posix_spawn"], ">= 0.7x", 0.7)):
            if not refs or not e.get(refs[0], {}).get("tasks_per_s"):
                add("e2e", f"tinytownd vs {label}", tt, "no result", None, goal, False)
                continue
            ref = e[refs[0]]["tasks_per_s"]
            r = ratio(tt, ref)
            add("e2e", f"tinytownd vs {label}", tt, f"{refs[0]} {ref:,.0f}/s", r, goal,
                r is not None and r >= need)
            rr = per_round(strong if refs == [best] else refs)
            if rr:
                add("e2e", "  (same, round by round)", ", ".join(f"{x:.2f}x" for x in rr), "",
                    None, goal, all(x >= need for x in rr))
        for key, _s, _x, _share in E2E_SYSTEMS:
            if key == "tinytownd":
                continue
            x = e.get(key, {})
            if x.get("tasks_per_s"):
                add("e2e", f"  {key}: {x.get('cmd', '')}"[:110], x["tasks_per_s"], runs_txt(key),
                    ratio(tt, x["tasks_per_s"]), "", None)
            elif x.get("errors"):
                add("e2e", f"  {key}", "ERROR", x["errors"][0][:80])
        for key, label in (("cost", "as shipped"),
                           ("cost_claim", "runtime backlog claim instead of batch dispatch")):
            c = e.get(key, {})
            if "tasks_per_s" in c:
                add("e2e", f"tinytownd per task ({label}): tasks/s; py CPU ms; Redis cmds",
                    c["tasks_per_s"], f"{c['py_cpu_ms_per_task']} ms; "
                    f"{c['redis_cmds_per_task']} cmds", ratio(c["tasks_per_s"],
                                                             e.get("cost", {}).get("tasks_per_s")),
                    "<= 25 cmds" if key == "cost" else "",
                    c["redis_cmds_per_task"] <= 25 if key == "cost" else None, fmt="{:,.1f}")
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
        base = p.get("off", {}).get("tasks_per_s")
        for pol in ("off", "everysec", "always"):
            if "tasks_per_s" not in p.get(pol, {}):
                add("persist", f"tinytownd batch tasks/s, appendfsync {pol}", "ERROR",
                    "; ".join(p.get(pol, {}).get("errors", ["no result"]))[:80])
                continue
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


def split_txt(row: dict) -> str:
    """The CPU split of one run, ms per task: tinytownd's loop thread / other threads / CLI
    children / redis-server; a peer's worker processes / jobs' sh / redis-server / producer."""
    c = row.get("cpu_ms_per_task") or {}
    if "loop_thread" in c:
        return (f"loop thread {c['loop_thread']:.2f}, other threads {c['other_threads']:.2f}; "
                f"CLI children {c['cli_children']:.2f}; redis-server {c['redis']:.2f}")
    if "workers" in c:
        return (f"worker procs {c['workers']:.2f}; jobs' sh {c['jobs_sh']:.2f}; "
                f"redis-server {c['redis']:.2f}; producer {c['producer']:.2f}")
    return ""


def runs_table(res: dict) -> list[tuple]:
    """Every e2e and persistence run, in run order, with the load and the CPU split."""
    rows = []
    for sec in ("e2e", "persist"):
        allruns = []
        for key, x in (res.get(sec) or {}).items():
            for r in (x.get("runs") or []) if isinstance(x, dict) else []:
                allruns.append((r.get("round", 0), key, r))
        order = {k: i for i, (k, *_r) in enumerate(E2E_SYSTEMS)}
        for rnd, key, r in sorted(allruns, key=lambda t: (t[0], order.get(t[1], 99))):
            la, lb = r.get("load_start") or [], r.get("load_end") or []
            rows.append((sec, rnd, key, f"{r['tasks_per_s']:,.1f}", r.get("n"),
                         " ".join(f"{v:.2f}" for v in la[:3]) + " -> " +
                         " ".join(f"{v:.2f}" for v in lb[:1]), split_txt(r)))
    return rows


def render(rows: list[tuple], head=("section", "measure", "value", "reference", "ratio", "goal",
                                    "met")) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    lines = ["| " + fmt.format(*head) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + fmt.format(*map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> dict:
    import gevent
    import redis
    out = {"python": platform.python_version(), "gevent": gevent.__version__,
           "redis_py": redis.__version__, "cpus": os.cpu_count(), "kernel": platform.release()}
    for mod in ("rq", "huey", "dramatiq", "celery", "greenlet", "hiredis"):
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
        # small sizes, but still every system interleaved over 3 rounds
        a.n, a.raw_n, a.persist_n = min(a.n, 500), 20_000, a.persist_n or 300
    skip = set(filter(None, a.skip.split(",")))
    only = set(filter(None, a.only.split(",")))
    res: dict = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "argv": sys.argv[1:], "n": a.n, "workers": a.w, **versions()}}
    res["meta"]["uptime_start"] = uptime()
    log(f"uptime at the start: {res['meta']['uptime_start']}")
    t0 = time.monotonic()
    for name in SECTIONS:
        if name in skip or (only and name not in only):
            continue
        log(f"== {name}  (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
        try:
            globals()[f"sec_{name}"](res, a)
        except Exception as e:  # one broken section does not hide the others
            res[name] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{name} failed: {e}")
    res["meta"]["wall_s"] = round(time.monotonic() - t0, 1)
    res["meta"]["uptime_end"] = uptime()
    out = a.out or os.path.join(HERE, "results", time.strftime("run_all-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"uptime at the start: {res['meta']['uptime_start']}")
    print(f"uptime at the end:   {res['meta']['uptime_end']}\n")
    print(render(table(res)))
    runs = runs_table(res)
    if runs:
        print("\nEvery run (load average 1/5/15 min at the start -> 1 min at the end; CPU ms per "
              "task):\n")
        print(render(runs, head=("section", "round", "system", "tasks/s", "n", "load",
                                 "CPU split ms/task")))
    errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    for k, v in errors.items():
        print(f"\n{k}: ERROR {v}")
    print(f"\nraw results: {out}  (wall {res['meta']['wall_s']} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
