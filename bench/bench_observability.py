#!/usr/bin/env python3
"""The cost of looking: the e2e batch with the HTTP listener scraped and with a dashboard open,
against the listener off, in the same run; and the /metrics scrape time with 1,000 agents.

    python bench/bench_observability.py e2e    [-n 5000] [-w 8] [--repeat 3] [--modes ...]
    python bench/bench_observability.py scrape [--agents 1000] [--scrapes 200]
    python bench/bench_observability.py scrape-cpu [--agents 1000] [--reps 300]

e2e: `tinytownd batch FILE --cli true --agents W` (as bench_e2e.py's tinytownd row), interleaved
run by run (off, scrape, dashboard, browser, off, ...), medians kept; rate = N / the batch's own
wall time.
  off        no listener (the default of an embedded batch)
  scrape     --http 127.0.0.1:PORT and GET /metrics every second from this process
  dashboard  --http and the dashboard page's own traffic from this process: GET /api/dashboard
             every 2 s plus one /api/events?last=50 stream read to the end (no rendering)
  browser    --http and the real page in headless Chromium (Selenium): the same requests plus
             the DOM updates; Chromium's own CPU competes with the batch on the same cores
scrape: `tinytownd run` with A agents (CLI `true`, idle), then S scrapes of /metrics, 0.55 s
apart (longer than the view's 0.5 s cache, so every scrape reads Redis); client-side latency
p50/p99/max.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
BIN = os.path.dirname(sys.executable)

from bench_e2e import write_batch_file  # noqa: E402


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, stop: threading.Event, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not stop.is_set():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ----------------------------------------------------------------------------- watchers
def scraper(port: int, stop: threading.Event, stats: dict) -> None:
    if not wait_listening(port, stop):
        return
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status, body = get(port, "/metrics")
            stats.setdefault("scrape_ms", []).append((time.perf_counter() - t0) * 1000)
            stats["bad"] = stats.get("bad", 0) + (status != 200)
        except OSError:
            stats["errors"] = stats.get("errors", 0) + 1
        stop.wait(max(0.0, 1.0 - (time.perf_counter() - t0)))


def page_traffic(port: int, stop: threading.Event, stats: dict) -> None:
    if not wait_listening(port, stop):
        return

    def events():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /api/events?last=50 HTTP/1.1\r\nHost: x\r\n\r\n")
            n = 0
            while not stop.is_set():
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                n += chunk.count(b"\nid: ") + chunk.startswith(b"id: ")
            stats["sse_events"] = n
            s.close()
        except OSError:
            stats["sse_errors"] = stats.get("sse_errors", 0) + 1
    t = threading.Thread(target=events, daemon=True)
    t.start()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status, _ = get(port, "/api/dashboard")
            stats.setdefault("dashboard_ms", []).append((time.perf_counter() - t0) * 1000)
        except OSError:
            stats["errors"] = stats.get("errors", 0) + 1
        stop.wait(max(0.0, 2.0 - (time.perf_counter() - t0)))
    t.join(5)


def browser(port: int, stop: threading.Event, stats: dict) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    udd = tempfile.mkdtemp(prefix="ttb-chromium-", dir="/tmp")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--user-data-dir={udd}", "--window-size=1280,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        if wait_listening(port, stop):
            drv.get(f"http://127.0.0.1:{port}/")
            stats["browser_opened"] = True
            stop.wait()
            try:
                stats["feed_items"] = drv.execute_script(
                    "return document.querySelectorAll('#feed li').length")
            except Exception:
                pass
    finally:
        drv.quit()
        shutil.rmtree(udd, ignore_errors=True)


WATCHERS = {"off": None, "scrape": scraper, "dashboard": page_traffic, "browser": browser}


def one_batch(n: int, w: int, mode: str) -> dict:
    tt = os.path.join(BIN, "tinytownd")
    with tempfile.TemporaryDirectory(prefix="ttb-obs-", dir="/tmp") as d:
        bf = os.path.join(d, "batch.yaml")
        write_batch_file(bf, n)
        summ = os.path.join(d, "summary.json")
        cmd = [tt, "batch", bf, "--dir", os.path.join(d, "b"), "--cli", "true", "--agents",
               str(w), "--progress", "none", "--summary", summ, "--id", "bench"]
        port = free_port()
        stop, stats, th = threading.Event(), {}, None
        if WATCHERS[mode]:
            cmd += ["--http", f"127.0.0.1:{port}"]
        # the browser is started first (it takes a second) and opens the page once it listens
        if WATCHERS[mode]:
            th = threading.Thread(target=WATCHERS[mode], args=(port, stop, stats), daemon=True)
            th.start()
        if mode == "browser":
            time.sleep(2.0)
        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=d)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = time.perf_counter() - t0
        stop.set()
        if th is not None:
            th.join(30)
        if p.returncode != 0:
            raise SystemExit(f"tinytownd batch exit {p.returncode}: {p.stderr[-2000:]}")
        s = json.load(open(summ))
    dt = s["wall_time_s"]
    # CPU of the batch's whole process tree (daemon, redis-server, the `true` CLIs): what looking
    # costs, much less at the mercy of the machine's load than the wall time
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = {"mode": mode, "n": n, "workers": w, "secs": round(dt, 3),
           "tasks_per_s": round(n / dt, 1), "command_wall_s": round(total, 3),
           "cpu_ms_per_task": round(1000 * cpu / n, 3),
           "completed": s["totals"]["completed"]}
    for k in ("scrape_ms", "dashboard_ms"):
        if stats.get(k):
            v = sorted(stats.pop(k))
            out[k] = {"count": len(v), "p50": round(v[len(v) // 2], 2), "max": round(v[-1], 2)}
    out.update(stats)
    return emit(out)


def bench_e2e(n: int, w: int, repeat: int, modes: list[str]) -> dict:
    runs: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for m in modes:
            r = one_batch(n, w, m)
            runs[m].append(r["tasks_per_s"])
            cpu[m].append(r["cpu_ms_per_task"])
    med = {m: statistics.median(v) for m, v in runs.items()}
    cmed = {m: statistics.median(v) for m, v in cpu.items()}
    base, cbase = med.get("off"), cmed.get("off")
    return emit({"summary": "observability_e2e", "n": n, "workers": w, "repeat": repeat,
                 "runs": runs, "median": med,
                 "ratio_vs_off": {m: round(v / base, 3) for m, v in med.items()} if base else {},
                 "cpu_ms_per_task": cpu, "cpu_median": cmed,
                 "cpu_ratio_vs_off": {m: round(v / cbase, 3) for m, v in cmed.items()}
                 if cbase else {},
                 "load": os.getloadavg()})


# ----------------------------------------------------------------------------- scrape
def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def bench_scrape(agents: int, scrapes: int) -> dict:
    tt = os.path.join(BIN, "tinytownd")
    root = tempfile.mkdtemp(prefix="ttb-scr-", dir="/tmp")
    port = free_port()
    cfg = os.path.join(root, "tinytownd.yaml")
    with open(cfg, "w") as f:
        json.dump({"town": {"name": "scr", "root": root},
                   "redis": {"socket": "redis.sock", "appendonly": False, "save": ""},
                   "logging": {"level": "warning", "file": "logs/daemon.log"},
                   "http": {"listen": f"127.0.0.1:{port}"},
                   "agent_clis": {"t": {"command": "true"}},
                   "agents": [{"name": "a", "cli": "t", "count": agents}]}, f)
    p = subprocess.Popen([tt, "run", "-c", cfg], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=root)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                status, body = get(port, "/metrics")
                if status == 200 and f'tinytown_agents_total{{state="idle"}} {agents}.0' \
                        in body.decode():
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("agents did not come up")
        time.sleep(3.0)
        idle_s = 10.0
        c0, t0 = cpu_s(p.pid), time.monotonic()
        time.sleep(idle_s)
        idle_rate = (cpu_s(p.pid) - c0) / (time.monotonic() - t0)
        lat, size = [], 0
        c1, t1 = cpu_s(p.pid), time.monotonic()
        for _ in range(scrapes):
            t0 = time.perf_counter()
            status, body = get(port, "/metrics")
            lat.append((time.perf_counter() - t0) * 1000)
            size = len(body)
            assert status == 200
            time.sleep(0.55)
        busy = cpu_s(p.pid) - c1 - idle_rate * (time.monotonic() - t1)
        lat.sort()
        q = statistics.quantiles(lat, n=100)
        return emit({"summary": "metrics_scrape", "agents": agents, "scrapes": scrapes,
                     "daemon_cpu_ms_per_scrape": round(1000 * busy / scrapes, 2),
                     "daemon_idle_cpu_pct": round(100 * idle_rate, 1),
                     "p50_ms": round(statistics.median(lat), 2), "p99_ms": round(q[98], 2),
                     "max_ms": round(lat[-1], 2), "body_bytes": size, "load": os.getloadavg()})
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(root, ignore_errors=True)


SCRAPE_CPU_CODE = r"""
import json, sys, time, tempfile, shutil
from gevent import monkey; monkey.patch_all()
sys.path.insert(0, sys.argv[2])
from prometheus_client import generate_latest
from tests.support.helpers import RedisServer
from tinytownd.store.keys import Keys
from tinytownd.store import records
from tinytownd.http import town_view
from tinytownd.http.collectors import TownCollector
n, reps = int(sys.argv[1]), int(sys.argv[3])
d = tempfile.mkdtemp(prefix="ttb-scpu-", dir="/tmp")
srv = RedisServer(__import__("pathlib").Path(d))
srv.start()
try:
    r = srv.client()
    k = Keys("bench")
    p = r.pipeline(transaction=False)
    for i in range(n):
        aid = f"00000000-0000-4000-8000-{i:012d}"
        p.hset(k.agent(aid), mapping=records.new_agent_hash(aid, f"a-{i}", role="worker", cli="t"))
        p.hset(k.agent_names, f"a-{i}", aid)
    p.execute()
    view = town_view.TownView(lambda: r, k)

    class L:  # the listener's surface the collector uses
        daemon = type("D", (), {"redis": None, "supervisor": type("S", (), {"services": {}})()})()
        def town_view(self, budget, counts_only=False):
            return view.get(budget, town_view.COUNT_FIELDS if counts_only
                            else town_view.AGENT_FIELDS), None
        def readiness(self, **kw):
            return True, []
    col = TownCollector(L())

    class Reg:
        def collect(self):
            return col.collect()
    generate_latest(Reg())
    cpu, wall = [], []
    for _ in range(reps):
        view._views.clear()                     # no cache: every call reads Redis
        c0, t0 = time.process_time(), time.perf_counter()
        body = generate_latest(Reg())
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    stats = r.info("commandstats")
    lua = stats.get("cmdstat_evalsha", {}).get("usec_per_call")
    cpu.sort(); wall.sort()
    q = lambda v, f: round(v[min(len(v) - 1, int(f * len(v)))], 2)
    print(json.dumps({"summary": "metrics_collect_in_process", "agents": n, "reps": reps,
                      "cpu_ms_p50": q(cpu, .5), "cpu_ms_p99": q(cpu, .99),
                      "wall_ms_p50": q(wall, .5), "wall_ms_p99": q(wall, .99),
                      "redis_lua_ms_per_call": round(lua / 1000, 2) if lua else None,
                      "agents_gauge": 'tinytown_agents_total{state="starting"} %d.0' % n
                      in body.decode()}))
finally:
    srv.stop()
    shutil.rmtree(d, ignore_errors=True)
"""


def bench_scrape_cpu(agents: int, reps: int) -> dict:
    """The collector alone (view read + exposition), in a process of its own against a private
    redis-server: CPU ms per scrape of our Python, which the machine's load does not inflate."""
    p = subprocess.run([sys.executable, "-c", SCRAPE_CPU_CODE, str(agents), ROOT, str(reps)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["load"] = os.getloadavg()
    return emit(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("e2e")
    e.add_argument("-n", type=int, default=5000)
    e.add_argument("-w", type=int, default=8)
    e.add_argument("--repeat", type=int, default=3)
    e.add_argument("--modes", default="off,scrape,dashboard,browser")
    s = sub.add_parser("scrape")
    s.add_argument("--agents", type=int, default=1000)
    s.add_argument("--scrapes", type=int, default=200)
    c = sub.add_parser("scrape-cpu")
    c.add_argument("--agents", type=int, default=1000)
    c.add_argument("--reps", type=int, default=300)
    a = ap.parse_args()
    if a.what == "e2e":
        bench_e2e(a.n, a.w, a.repeat, a.modes.split(","))
    elif a.what == "scrape-cpu":
        bench_scrape_cpu(a.agents, a.reps)
    else:
        bench_scrape(a.agents, a.scrapes)


if __name__ == "__main__":
    main()
