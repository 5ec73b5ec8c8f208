"""The HTTP listener of a real daemon (`tinytownd run` subprocess, its own redis-server), over
real HTTP: every endpoint's status codes, readiness across a Redis outage, the Prometheus text,
tokens, bounds, Server-Sent Events with Last-Event-ID."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import short_tmpdir, wait_for
from tests.support.http import SSEClient, base_url, get, get_json, raw, web_daemon

TOWNHALL_NAMES = ["tinytown_up", "tinytown_ready", "tinytown_agents_total",
                  "tinytown_tasks_pending", "tinytown_tasks_completed",
                  "tinytown_missions_active", "tinytown_redis_latency_seconds",
                  "tinytown_backlog_tasks", "tinytown_tasks_assigned_pending",
                  "tinytown_urgent_messages"]
DAEMON_NAMES = ["tinytownd_round_duration_seconds", "tinytownd_pickup_latency_seconds",
                "tinytownd_rounds", "tinytownd_retries", "tinytownd_failures",
                "tinytownd_deadlettered", "tinytownd_redis_child_restarts",
                "tinytownd_service_restarts", "tinytownd_reloads", "tinytownd_deadletter_messages"]


@pytest.fixture(scope="module")
def web():
    with short_tmpdir() as root:
        d = web_daemon(root)
        try:
            d.start()
            yield d
        finally:
            d.cleanup()


def metrics(d) -> dict:
    """name -> {labels tuple: value} of every sample."""
    status, headers, body = get(d, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def assign(d, text="do it") -> str:
    r = d.cli("assign", "w-1", text)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def task_state(d, tid) -> str:
    return d.redis().hget(f"tt:t:task:{tid}", "state")


def test_probes_and_api(web):
    status, body = get_json(web, "/healthz")
    assert status == 200 and body["status"] == "ok" and body["uptime_s"] > 0
    assert body["version"] and body["pid"] == web.proc.pid
    status, body = get_json(web, "/readyz")
    assert status == 200, body
    assert body["failing"] == [] and set(body["checks"]) >= {"redis", "services",
                                                              "mission_dispatcher"}
    status, st = get_json(web, "/api/status")
    assert status == 200
    cli = json.loads(web.cli("status", "--json").stdout)
    assert set(st) == set(cli)
    assert st["pid"] == cli["pid"] and st["instance"] == cli["instance"]
    assert st["components"]["http"]["listen"] == web.data["http"]["listen"]
    status, sc = get_json(web, "/api/scaling")
    assert status == 200
    for f in ("queue_depth", "pending_tasks", "in_flight_tasks", "active_agents", "cold_agents",
              "desired_agents", "scaling_recommendation"):
        assert f in sc, f
    assert sc["active_agents"] == 2
    assert sc["scaling_recommendation"] in ("scale_up", "steady", "scale_down", "scale_to_zero")
    status, _h, page = get(web, "/")
    assert status == 200 and b"<html" in page and b"http://" not in page.split(b"<script>")[0]
    assert get(web, "/nope")[0] == 404
    assert get(web, "/metrics", method="POST", body=b"")[0] == 405
    assert get(web, "/api/status", method="DELETE")[0] == 405


def test_metrics_names_and_values_move(web):
    m0 = metrics(web)
    for name in TOWNHALL_NAMES:
        key = name + "_total" if name == "tinytown_tasks_completed" else name
        assert key in m0, name
    assert m0["tinytown_up"][()] == 1 and m0["tinytown_ready"][()] == 1
    assert m0["tinytown_agents_total"][(("state", "idle"),)] == 2
    for name in DAEMON_NAMES:
        assert any(k.startswith(name) for k in m0) or name in (
            "tinytownd_round_duration_seconds", "tinytownd_pickup_latency_seconds",
            "tinytownd_rounds", "tinytownd_retries", "tinytownd_failures", "tinytownd_reloads"), \
            name
    done0 = m0["tinytown_tasks_completed_total"][()]
    tids = [assign(web, f"task {i}") for i in range(3)]
    wait_for(lambda: all(task_state(web, t) == "completed" for t in tids), 30, what="tasks done")

    def moved():
        m = metrics(web)
        return m if m["tinytown_tasks_completed_total"][()] >= done0 + 3 else None
    m1 = wait_for(moved, 15, interval=0.3, what="completed count to move")
    ok = (("cli", "quick"), ("outcome", "ok"))
    assert m1["tinytownd_rounds_total"][ok] >= 3
    assert m1["tinytownd_round_duration_seconds_count"][ok] >= 3
    assert m1["tinytownd_round_duration_seconds_sum"][ok] >= 3 * 0.3
    assert m1["tinytownd_pickup_latency_seconds_count"][(("cli", "quick"),)] >= 3
    assert m1["tinytownd_service_restarts_total"][(("service", "agents"),)] == 0
    # a reload counts by result
    assert web.cli("reload").returncode == 0
    m2 = metrics(web)
    assert m2["tinytownd_reloads_total"][(("result", "ok"),)] >= 1
    # a CLI's cooldown (set town-wide in Redis by a rate limit) counts the agents waiting it out;
    # junk in the CLI's state is no cooldown and no error
    r, key, quick = web.redis(), "tt:t:tinytownd:cli:quick", (("cli", "quick"),)
    assert m2["tinytownd_cli_cooldowns_active"][quick] == 0
    try:
        r.hset(key, "cooldown_until", int(time.time() * 1000) + 60_000)
        wait_for(lambda: metrics(web)["tinytownd_cli_cooldowns_active"][quick] == 2, 10,
                 interval=0.3, what="cooldown gauge at 2 agents")
        r.hset(key, "cooldown_until", "junk")
        wait_for(lambda: metrics(web)["tinytownd_cli_cooldowns_active"][quick] == 0, 10,
                 interval=0.3, what="cooldown gauge back to 0")
    finally:
        r.delete(key)


def test_bad_requests_are_bounded(web):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 8000 + b"\r\n" + \
        b"X-Pad2: " + b"b" * 9000 + b"\r\n\r\n"
    reply = raw(web, big)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    long_line = b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw(web, long_line).startswith(b"HTTP/1.1 414")
    status, _h, _b = get(web, "/api/status", method="GET", body=b"x" * 100,
                         headers={"Content-Length": "100"})
    assert status == 413
    assert raw(web, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    # and the daemon still answers
    assert get(web, "/healthz")[0] == 200


def test_idle_connections_do_not_block_the_daemon(web):
    """300 idle connections (over http.max_connections=256): the control socket, the agents and
    the probes keep working (the longest-idle connection makes room for a new one)."""
    host, port = web.data["http"]["listen"].rsplit(":", 1)
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection((host, int(port)), timeout=5)
            socks.append(s)
        t0 = time.monotonic()
        st = web.status()
        assert st["state"] == "running"
        assert time.monotonic() - t0 < 5
        tid = assign(web, "while idle clients hang on")
        wait_for(lambda: task_state(web, tid) == "completed", 30, what="task under idle load")
        assert get(web, "/healthz", timeout=5)[0] == 200
        assert get(web, "/readyz", timeout=5)[0] == 200
        conns = get_json(web, "/api/status")[1]["components"]["http"]["connections"]
        assert conns <= 256
    finally:
        for s in socks:
            s.close()


def test_sse_live_and_last_event_id_resume(web):
    r = web.redis()
    c = SSEClient(web)
    assert c.status == 200
    tid = assign(web, "watched")
    evs = c.events(1, timeout=15)
    assert evs[0]["data"]["event_type"] == "task_assigned"
    assert evs[0]["data"]["task_id"] == tid
    assert r.xrange("tt:t:events", min=evs[0]["id"], max=evs[0]["id"])   # the stream id
    wait_for(lambda: task_state(web, tid) == "completed", 30, what="task done")
    got = [evs[0]]
    got += c.events(1, timeout=15)
    last = got[-1]["id"]
    c.close()
    # while disconnected
    t2 = [assign(web, f"missed {i}") for i in range(2)]
    wait_for(lambda: all(task_state(web, t) == "completed" for t in t2), 30, what="tasks done")
    between = r.xrange("tt:t:events", min="(" + last)
    assert len(between) >= 4
    c2 = SSEClient(web, headers={"Last-Event-ID": last})
    evs2 = c2.events(len(between), timeout=15)
    c2.close()
    assert [e["id"] for e in evs2] == [eid for eid, _f in between]
    # filters: an agent's events only; a bad Last-Event-ID is a 400; an unknown agent a 404
    aid = r.hget("tt:t:tinytownd:agent_names", "w-2")
    c3 = SSEClient(web, path=f"/api/events?agent=w-2&last=1000")
    evs3 = c3.events(1, timeout=10)
    c3.close()
    assert all(aid in (e["data"].get("agent_id"), e["data"].get("parent_agent_id"))
               for e in evs3)
    assert get(web, "/api/events", headers={"Last-Event-ID": "abc"})[0] == 400
    assert get(web, "/api/events?agent=nobody")[0] == 404


def test_sse_subscribers_are_bounded(tmpdir_short):
    d = web_daemon(tmpdir_short, agents=1, http={"max_sse_subscribers": 2})
    try:
        d.start()
        a, b = SSEClient(d), SSEClient(d)
        assert a.status == b.status == 200
        status, headers, _ = get(d, "/api/events")
        assert status == 503 and "retry-after" in headers
        a.close()
        wait_for(lambda: get_json(d, "/api/status")[1]["components"]["http"]["sse_subscribers"]
                 < 2 or None, 40, interval=0.2, what="subscriber released")
        c = SSEClient(d)
        assert c.status == 200
        b.close()
        c.close()
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_readyz_and_metrics_across_a_redis_outage(tmpdir_short):
    d = web_daemon(tmpdir_short, agents=1)
    try:
        d.start()
        assert get(d, "/readyz")[0] == 200
        pid = d.status()["redis"]["pid"]
        os.kill(pid, signal.SIGSTOP)            # Redis stops answering
        try:
            status, body = wait_for(lambda: (lambda s: s if s[0] == 503 else None)(
                get_json(d, "/readyz", timeout=10)), 20, interval=0.2, what="503")
            assert "redis" in body["failing"]
            assert get(d, "/healthz")[0] == 200
            m = metrics(d)
            assert m["tinytown_up"][()] == 1 and m["tinytown_ready"][()] == 0
            assert "tinytown_agents_total" not in m
        finally:
            os.kill(pid, signal.SIGKILL)        # the supervisor restarts the child
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: get(d, "/readyz", timeout=10)[0] == 200, 30, interval=0.2,
                 what="ready again after the restart")
        assert d.status()["redis"]["pid"] != pid
        m = metrics(d)
        assert m["tinytown_ready"][()] == 1
        assert m["tinytownd_redis_child_restarts_total"][()] >= 1
        assert d.stop() == 0
    finally:
        d.cleanup()


TOKEN = "s3cret-token-0123456789abcdef"


def test_token_required_except_for_probes(tmpdir_short):
    (tmpdir_short / "token").write_text(TOKEN + "\n")
    d = web_daemon(tmpdir_short, agents=1, http={"token_file": "token"})
    try:
        d.start()
        for path in ("/metrics", "/api/status", "/api/scaling", "/api/dashboard", "/",
                     "/api/events"):
            assert get(d, path)[0] == 401, path
            assert get(d, path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] \
                == 401, path
        assert get(d, "/healthz")[0] == 200
        assert get(d, "/readyz")[0] == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert get(d, "/metrics", headers=auth)[0] == 200
        assert get(d, "/api/status", headers=auth)[0] == 200
        status, headers, _ = get(d, f"/?token={TOKEN}")
        assert status == 200 and TOKEN in headers["set-cookie"]
        assert get(d, "/api/scaling", headers={"Cookie": f"tinytownd_token={TOKEN}"})[0] == 200
        # metrics_public by reload (live): /metrics opens, the rest stays closed
        d.data["http"]["metrics_public"] = True
        d.write(**{k: v for k, v in d.data.items() if k != "town"})
        assert d.cli("reload").returncode == 0
        assert get(d, "/metrics")[0] == 200
        assert get(d, "/api/status")[0] == 401
        logs = (tmpdir_short / "stdout.log").read_text()
        assert TOKEN not in logs
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_non_loopback_without_token_is_refused(tmpdir_short):
    good = web_daemon(tmpdir_short, agents=1)
    url = base_url(good)
    sections = {k: v for k, v in good.data.items() if k != "town"}
    bad = {**sections, "http": {"listen": "0.0.0.0:18999"}}
    good.write(**bad)
    r = good.cli("check-config")
    assert r.returncode == 78 and "http.listen" in r.stderr + r.stdout
    good.start(wait=False)
    assert good.proc.wait(30) == 78
    assert "http.listen" in (tmpdir_short / "stderr.log").read_text()
    assert "[::]:18999" not in (tmpdir_short / "stderr.log").read_text()
    # a running daemon refuses the same on reload and keeps its listener
    good.write(**sections)
    try:
        good.start()
        good.write(**bad)
        r = good.cli("reload")
        assert r.returncode == 78 and "http.listen" in r.stderr + r.stdout
        assert good.status()["state"] == "running"
        assert get(url, "/healthz")[0] == 200
        # with a token the same address is accepted by check-config
        good.write(**{**sections, "http": {"listen": "0.0.0.0:18999", "token": TOKEN}})
        assert good.cli("check-config").returncode == 0
    finally:
        good.cleanup()


def test_port_in_use_is_exit_73(tmpdir_short):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d = web_daemon(tmpdir_short, agents=0, http={"listen": f"127.0.0.1:{port}"})
        try:
            d.start(wait=False)
            assert d.proc.wait(30) == 73
            assert "http.listen" in (tmpdir_short / "stderr.log").read_text()
        finally:
            d.cleanup()


def test_deadlettered_total_counts_python_and_lua_dead_letters(web):
    """A message the worker rejects in Python (not JSON) and one take_round.lua rejects unread
    (over MESSAGE_MAX_BYTES) both count, town-wide, beside the list's length."""
    from tinytownd.store.keys import Keys
    from tinytownd.store.records import MESSAGE_MAX_BYTES

    r, k = web.redis(), Keys("t")
    aid = r.hget(k.agent_names, "w-1")
    m0 = metrics(web)
    n0, len0 = m0["tinytownd_deadlettered_total"][()], m0["tinytownd_deadletter_messages"][()]
    r.rpush(k.inbox(aid), "{not json")
    r.rpush(k.inbox(aid), "x" * (MESSAGE_MAX_BYTES + 1))
    tid = assign(web, "after the junk")
    wait_for(lambda: task_state(web, tid) == "completed", 30, what="the good task after junk")
    reasons = [json.loads(x)["reason"] for x in r.lrange(k.deadletter, 0, -1)]
    assert any("bad JSON" in x for x in reasons) and any("bytes" in x for x in reasons), reasons
    m1 = wait_for(lambda: (lambda m: m if m["tinytownd_deadlettered_total"][()] >= n0 + 2
                           else None)(metrics(web)), 10, interval=0.3, what="counter moved")
    assert m1["tinytownd_deadlettered_total"][()] == n0 + 2
    assert m1["tinytownd_deadletter_messages"][()] == len0 + 2
