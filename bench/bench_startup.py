#!/usr/bin/env python3
"""Startup and reload latency of tinytownd (goals: redis child ≤ 50 ms, READY ≤ 1 s, reload ≤ 100 ms).

    .venv/bin/python bench/bench_startup.py [--runs N] [--json]

Measures, median (and min/max) over N runs, each in a fresh temp town:
  redis_child_ready_ms   OwnedRedis.start(): spawn of redis-server → PING answered (in-process)
  redis_child_start_ms   the whole OwnedRedis.start() (version check, leftover check, spawn, ready)
  daemon_ready_ms        `tinytownd run` exec → READY=1 received on a NOTIFY_SOCKET datagram socket
                         (includes the Python interpreter and imports)
  reload_rtt_ms          control-socket `reload` request → reply (validate, diff, apply, including a
                         CONFIG SET maxmemory on the owned child)
  reload_cli_ms          `tinytownd reload` as a command (adds the CLI process start)
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

# Daemons here do not open the HTTP listener (127.0.0.1:8474) unless their config sets http.listen:
# several run at once, and the machine is shared.
os.environ.setdefault("TINYTOWND_HTTP_LISTEN", "off")
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinytownd import config, logs  # noqa: E402
from tinytownd.daemon import control  # noqa: E402
from tinytownd.daemon.redis_server import OwnedRedis  # noqa: E402

EXE = [str(Path(sys.executable).parent / "tinytownd")]
if not Path(EXE[0]).exists():
    EXE = [sys.executable, "-m", "tinytownd"]


def town(tmp: Path, maxmemory: str = "0") -> Path:
    p = tmp / "t.yaml"
    p.write_text(f"town: {{name: bench, root: {tmp}}}\nredis: {{maxmemory: {maxmemory}}}\n"
                 "logging: {level: warning}\n")
    return p


def bench_child(runs: int) -> tuple[list[float], list[float]]:
    logs.configure("warning")
    log = logs.get_logger("bench")
    ready, whole = [], []
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        try:
            cfg = config.load(str(town(tmp)), env={})
            r = OwnedRedis(cfg, log)
            t0 = time.perf_counter()
            r.start()
            whole.append((time.perf_counter() - t0) * 1000)
            ready.append(r.ready_s * 1000)
            r.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ready, whole


def bench_daemon(runs: int, reloads: int) -> tuple[list[float], list[float], list[float]]:
    ready, rtt, cli = [], [], []
    for i in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(tmp / "notify.sock"))
        ns.settimeout(30)
        cfg_path = town(tmp)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock")}
        t0 = time.perf_counter()
        proc = subprocess.Popen(EXE + ["run", "-c", str(cfg_path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
            ready.append((time.perf_counter() - t0) * 1000)
            if i == 0:   # reload round trips on the first daemon
                sock = tmp / "tinytownd.sock"
                for j in range(reloads):
                    town(tmp, maxmemory=f"{64 + j % 2}mb")
                    t1 = time.perf_counter()
                    reply = control.request(sock, "reload")
                    rtt.append((time.perf_counter() - t1) * 1000)
                    assert reply["ok"] and reply["changes"], reply
                for j in range(min(reloads, 5)):
                    town(tmp, maxmemory=f"{32 + j % 2}mb")
                    t1 = time.perf_counter()
                    subprocess.run(EXE + ["reload", "-c", str(cfg_path)], check=True,
                                   stdout=subprocess.DEVNULL)
                    cli.append((time.perf_counter() - t1) * 1000)
            control.request(tmp / "tinytownd.sock", "stop")
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ns.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return ready, rtt, cli


def summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2),
            "max": round(max(xs), 2), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    child_ready, child_whole = bench_child(a.runs)
    d_ready, rtt, cli = bench_daemon(a.runs, a.reloads)
    goals = {"redis_child_ready_ms": 50, "daemon_ready_ms": 1000, "reload_rtt_ms": 100}
    res = {"redis_child_ready_ms": summary(child_ready),
           "redis_child_start_ms": summary(child_whole),
           "daemon_ready_ms": summary(d_ready), "reload_rtt_ms": summary(rtt),
           "reload_cli_ms": summary(cli)}
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2]
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(), "redis": redis_v,
            "runs": a.runs, "reloads": a.reloads}
    if a.json:
        print(json.dumps({"meta": meta, "results": res, "goals_ms": goals}))
        return 0
    print(f"tinytownd startup bench ({meta})")
    print(f"{'metric':<24}{'median':>10}{'min':>10}{'max':>10}{'n':>5}  goal")
    for k, v in res.items():
        goal = f"<= {goals[k]} ms " + ("ok" if v["median"] <= goals[k] else "MISSED") \
            if k in goals else ""
        print(f"{k:<24}{v['median']:>10.2f}{v['min']:>10.2f}{v['max']:>10.2f}{v['n']:>5}  {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
