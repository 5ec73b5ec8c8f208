#!/usr/bin/env python3
"""The fault suite: inject real faults into real daemons and measure what happens.

    .venv/bin/python bench/faults/run.py [--quick] [--only CLASS,...] [--trials N] [--json OUT]
    .venv/bin/python bench/faults/run.py --list

One row per fault class: tasks submitted, completed, failed, lost (not terminal and in no queue),
duplicated executions (counted by the agent itself) against the rounds in flight at each
injected crash, stuck (still queued/running after the fault is gone plus a deadline), daemon
crashes (unexpected exits, supervised-service restarts, agent-worker crash restarts), hangs
(status unanswered within 2 s, SIGTERM ignored past the drain timeout, the class's deadline),
hostile inputs refused or dead-lettered with a reason, and the class's own checks; then a verdict
per goal. Exit 0 only when every goal holds for every class.

Each trial runs in its own process (a worker of this script) with its own temp dir, under a
deadline: a worker that outlives it is killed and counted as a hang. Whatever a trial started is
killed afterwards (tests/support/leftovers.py), tmpfs mounts are unmounted and the dir removed.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from bench.faults import harness  # noqa: E402
from bench.faults.harness import Result  # noqa: E402

GOALS = ("lost0", "stuck0", "dup<=inflight", "crash0", "hang0", "input", "checks")


def verdicts(r: dict) -> dict[str, bool]:
    return {
        "lost0": r["lost"] == 0,
        "stuck0": r["stuck"] == 0,
        "dup<=inflight": r["duplicates"] <= r["inflight_at_crash"],
        "crash0": r["crashes"] == 0,
        "hang0": r["hangs"] == 0,
        "input": r["bad_handled"] == r["bad_inputs"],
        "checks": r["checks_ok"] == r["checks"],
    }


def add(total: dict, r: dict) -> None:
    for k, v in r.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        elif k == "evidence":
            for e in v:
                if e not in total.setdefault("evidence", []) and len(total["evidence"]) < 60:
                    total["evidence"].append(e)
        elif k == "error" and v:
            total.setdefault("errors", []).append(v)


# ----------------------------------------------------------------------------- cleanup
def _mounts_under(d: Path) -> list[str]:
    out = []
    try:
        for line in open("/proc/mounts"):
            mp = line.split()[1].replace("\\040", " ")
            if mp == str(d) or mp.startswith(str(d) + "/"):
                out.append(mp)
    except OSError:
        pass
    return sorted(out, key=len, reverse=True)


def cleanup_dir(d: Path) -> list[str]:
    """Kill everything the trial left (by cwd, by command line), unmount, remove. Returns notes."""
    from tests.support import leftovers
    notes = []
    for _ in range(3):
        pids = set(leftovers.pids_under(d)) | {p for p, _g in harness.procs_matching(str(d))}
        pids.discard(os.getpid())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.3)
    for mp in _mounts_under(d):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    if os.environ.get("FAULTS_KEEP_LOGS"):      # (debugging: keep the daemons' logs)
        keep = Path(os.environ["FAULTS_KEEP_LOGS"]) / d.name
        for log in d.rglob("*.log"):
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, keep / f"{log.parent.name}-{log.name}")
    shutil.rmtree(d, ignore_errors=True)
    if d.exists():
        notes.append(f"could not remove {d}")
    return notes


# ----------------------------------------------------------------------------- worker
def worker(args) -> int:
    """Run one trial of one class in this process; write its Result as JSON to args.out."""
    from bench.faults import classes
    spec = classes.CLASSES[args.worker]
    trial = harness.Trial(Path(args.dir), args.worker, args.trial, args.quick,
                          spec.budget(args.quick) - 10)
    t0 = time.monotonic()
    out = Path(args.out)

    def save():
        trial.result.seconds = round(time.monotonic() - t0, 1)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(trial.result.to_dict(), default=str))
        os.replace(tmp, out)

    trial.save = save
    try:
        spec.fn(trial)
    except Exception as e:
        trial.result.error = f"{type(e).__name__}: {e}"
        trial.result.note("harness: " + "".join(traceback.format_exception(e))[-1200:])
    finally:
        for site in trial.sites:
            try:
                site.stop()
            except Exception as e:   # pragma: no cover
                trial.result.note(f"harness: stop failed: {e}")
            try:
                site.collect()
            except Exception as e:   # pragma: no cover
                trial.result.note(f"harness: collect failed: {e}")
        save()
    return 0


def run_trial(name: str, index: int, quick: bool, budget_s: float) -> dict:
    d = Path(tempfile.mkdtemp(prefix=f"ttf{index}-", dir="/tmp"))
    out = d / "result.json"
    log = open(d / "worker.log", "wb")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--trial", str(index),
           "--dir", str(d), "--out", str(out)] + (["--quick"] if quick else [])
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, cwd=str(REPO))
    timed_out = False
    try:
        p.wait(budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.wait(10)
    log.close()
    res = Result().to_dict()
    if out.exists():
        try:
            res = json.loads(out.read_text())
        except ValueError:
            pass
    elif not timed_out:
        res["error"] = f"worker exited {p.returncode} without a result"
        res["evidence"] = [(d / "worker.log").read_text(errors="replace")[-1500:]]
    if timed_out:
        res["hangs"] = res.get("hangs", 0) + 1
        tail = (d / "worker.log").read_text(errors="replace").strip().splitlines()[-6:]
        res.setdefault("evidence", []).append(
            f"trial exceeded its deadline of {budget_s:g}s and was killed; worker log: "
            + " | ".join(tail))
    res["seconds"] = round(time.monotonic() - t0, 1)
    for n in cleanup_dir(d):
        res.setdefault("evidence", []).append(n)
    return res


# ----------------------------------------------------------------------------- table
COLS = ("class", "trials", "subm", "done", "fail", "lost", "dup/infl", "stuck", "crash", "hang",
        "input ok", "checks", "secs", "verdict")


def row_cells(name: str, n: int, t: dict) -> list[str]:
    v = verdicts(t)
    bad = [g for g in GOALS if not v[g]]
    if t.get("errors"):
        verdict = "ERROR " + ",".join(bad)
    else:
        verdict = "PASS" if not bad else "FAIL " + ",".join(bad)
    return [name, str(n), str(t["submitted"]), str(t["completed"]), str(t["failed"]),
            str(t["lost"]), f"{t['duplicates']}/{t['inflight_at_crash']}", str(t["stuck"]),
            str(t["crashes"]), str(t["hangs"]), f"{t['bad_handled']}/{t['bad_inputs']}",
            f"{t['checks_ok']}/{t['checks']}", f"{t['seconds']:.0f}", verdict]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(COLS)] + rows) for i in range(len(COLS))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()   # noqa: E731
    return "\n".join([fmt(list(COLS)), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 trial per class, small sizes (CI)")
    ap.add_argument("--only", metavar="CLASS,...", help="run only these classes")
    ap.add_argument("--trials", type=int, metavar="N", help="trials per class (default: per class)")
    ap.add_argument("--json", metavar="OUT", help="write every trial's measurements as JSON")
    ap.add_argument("--jobs", type=int, metavar="N",
                    help="trials run at once (default 4 with --quick, else 3)")
    ap.add_argument("--list", action="store_true", help="list the fault classes and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--trial", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    from bench.faults import classes
    if args.list:
        for name, spec in classes.CLASSES.items():
            print(f"{name:<20} {spec.doc}")
        return 0
    names = list(classes.CLASSES)
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [w for w in want if w not in classes.CLASSES]
        if unknown:
            ap.error(f"unknown class(es) {', '.join(unknown)}; --list shows them")
        names = want
    started = time.time()
    load = os.getloadavg()
    print(f"fault suite: {len(names)} classes, {'quick' if args.quick else 'full'}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr, flush=True)
    rows, doc = [], {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                     "quick": args.quick, "loadavg_start": load, "classes": {}}
    ok = True
    jobs = args.jobs if args.jobs else (4 if args.quick else 3)
    plan = [(name, i, args.trials or classes.CLASSES[name].trials(args.quick))
            for name in names
            for i in range(args.trials or classes.CLASSES[name].trials(args.quick))]
    done: dict[str, list] = {name: [] for name in names}
    lock = threading.Lock()

    def one(job):
        name, i, n = job
        print(f"  {name} trial {i + 1}/{n} ...", file=sys.stderr, flush=True)
        r = run_trial(name, i, args.quick, classes.CLASSES[name].budget(args.quick))
        with lock:
            done[name].append(r)
            v = verdicts(r)
            bad = [g for g in GOALS if not v[g]]
            print(f"  {name} trial {i + 1}/{n}: {'PASS' if not bad and not r.get('error') else 'FAIL ' + ','.join(bad)}"
                  f" ({r['seconds']:.0f}s)", file=sys.stderr, flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        list(ex.map(one, plan))
    for name in names:
        total = Result().to_dict()
        total["evidence"] = []
        for r in done[name]:
            add(total, r)
        total["seconds"] = max([r["seconds"] for r in done[name]] or [0]) if jobs > 1 \
            else total["seconds"]
        cells = row_cells(name, len(done[name]), total)
        rows.append(cells)
        ok = ok and cells[-1] == "PASS"
        doc["classes"][name] = {"total": total, "trials": done[name], "verdicts": verdicts(total)}
    wall = time.time() - started
    doc["wall_s"] = round(wall, 1)
    doc["loadavg_end"] = os.getloadavg()
    print(render(rows))
    print(f"\n{sum(1 for r in rows if r[-1] == 'PASS')}/{len(rows)} classes pass every goal; "
          f"{wall:.0f}s; load average at the end {doc['loadavg_end'][0]:.2f}")
    for name in names:
        ev = doc["classes"][name]["total"].get("evidence") or []
        errs = doc["classes"][name]["total"].get("errors") or []
        if doc["classes"][name]["verdicts"] and all(doc["classes"][name]["verdicts"].values()) \
                and not errs:
            continue
        print(f"\n[{name}]")
        for e in errs:
            print(f"  harness error: {e}")
        for e in ev[:25]:
            print("  - " + e.replace("\n", "\n    "))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
