"""The listener's decisions, without a daemon: token policy, readiness, townhall's scaling
signal, the event feed, the header budget, the http config rules."""
from __future__ import annotations

import io
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytownd import config
from tinytownd.http import auth, feed, readiness, scaling
from tinytownd.http.server import _Budgeted, _TooLarge, url_of

TOKEN = "0123456789abcdef0123"


# --- auth -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,public,needs", [
    ("/healthz", False, False), ("/readyz", False, False), ("/metrics", False, True),
    ("/metrics", True, False), ("/api/status", True, True), ("/", True, True),
    ("/api/events", False, True)])
def test_needs_token(path, public, needs):
    assert auth.needs_token(path, token_set=True, metrics_public=public) is needs
    assert auth.needs_token(path, token_set=False, metrics_public=public) is False


def test_presented_token_sources():
    assert auth.presented({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}) == TOKEN
    assert auth.presented({"HTTP_AUTHORIZATION": f"bearer  {TOKEN} "}) == TOKEN
    assert auth.presented({"QUERY_STRING": f"a=1&token={TOKEN}"}) == TOKEN
    assert auth.presented({"HTTP_COOKIE": f"x=1; tinytownd_token={TOKEN}"}) == TOKEN
    assert auth.presented({"HTTP_AUTHORIZATION": "Basic abc"}) is None
    assert auth.presented({"HTTP_COOKIE": "\x00;;=="}) is None


@given(st.one_of(st.none(), st.text(max_size=64)))
def test_token_ok_only_for_the_token(given_token):
    assert auth.token_ok(given_token, TOKEN) is (given_token == TOKEN)


@given(st.dictionaries(st.sampled_from(["HTTP_AUTHORIZATION", "QUERY_STRING", "HTTP_COOKIE"]),
                       st.text(max_size=200)))
def test_presented_never_raises(environ):
    v = auth.presented(environ)
    assert v is None or isinstance(v, str)


# --- readiness --------------------------------------------------------------------------------
def _svc(state="running", age=0.5):
    return {"state": state, "restarts": 0, "last_error": None, "progress_age_s": age}


def test_readiness_checks():
    ok = {"reachable": True, "ping_ms": 0.3}
    base = {"agents": _svc(), "missions.dispatch": _svc()}
    r = readiness.checks(redis_probe=ok, services=base, stall_after_s=30, state="running")
    assert readiness.verdict(r) == (True, [])
    r = readiness.checks(redis_probe={"reachable": False, "error": "x"}, services=base,
                         stall_after_s=30, state="running")
    assert readiness.verdict(r) == (False, ["redis"])
    r = readiness.checks(redis_probe=ok, services={**base, "agents": _svc("restarting")},
                         stall_after_s=30, state="running")
    assert readiness.verdict(r) == (False, ["services"])
    assert r["services"]["not_running"] == {"agents": "restarting"}
    r = readiness.checks(redis_probe=ok, services={**base, "missions.dispatch": _svc(age=31)},
                         stall_after_s=30, state="running")
    assert readiness.verdict(r) == (False, ["mission_dispatcher"])
    r = readiness.checks(redis_probe=ok, services={"agents": _svc()}, stall_after_s=30,
                         state="stopping")
    assert readiness.verdict(r) == (False, ["daemon"])
    assert r["mission_dispatcher"] == {"ok": True, "enabled": False}


# --- scaling ----------------------------------------------------------------------------------
NOW = 1_800_000_000.0
OLD = "2020-01-01T00:00:00Z"


def _agent(state, task=None, last=OLD):
    return {"id": f"a-{state}-{task}", "state": state, "current_task": task,
            "last_active_at": last}


def test_scaling_townhall_cases():
    s = scaling.signal(town="t", agents=[], backlog=3, assigned_pending=0,
                       running_task_ids=set(), now=NOW)
    assert (s["pending_tasks"], s["desired_agents"], s["scaling_recommendation"]) == \
        (3, 3, "scale_up")
    s = scaling.signal(town="t", agents=[_agent("idle"), _agent("cold")], backlog=0,
                       assigned_pending=0, running_task_ids=set(), now=NOW)
    assert s["scaling_recommendation"] == "scale_to_zero"
    assert (s["active_agents"], s["cold_agents"]) == (1, 1)
    recent = "2027-01-15T08:00:00Z"        # NOW is 2027-01-15T08:00:00Z
    s = scaling.signal(town="t", agents=[_agent("idle", last=recent), _agent("idle")],
                       backlog=0, assigned_pending=0, running_task_ids=set(), now=NOW)
    assert s["scaling_recommendation"] == "scale_down"
    s = scaling.signal(town="t", agents=[_agent("working", "t1")], backlog=0,
                       assigned_pending=0, running_task_ids={"t1"}, now=NOW)
    assert (s["in_flight_tasks"], s["queue_depth"], s["scaling_recommendation"]) == \
        (1, 1, "steady")
    s = scaling.signal(town="t", agents=[], backlog=50, assigned_pending=0,
                       running_task_ids=set(), now=NOW, max_agents=4)
    assert s["desired_agents"] == 4


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["cold", "starting", "idle", "working", "paused",
                                           "draining", "stopped", "error", "junk"]),
                          st.one_of(st.none(), st.sampled_from(["t1", "t2", "t3"])),
                          st.one_of(st.none(), st.just(OLD), st.text(max_size=30))),
                max_size=20),
       st.integers(0, 100), st.integers(0, 100), st.sets(st.sampled_from(["t1", "t4"])),
       st.integers(1, 50))
def test_scaling_invariants(agents, backlog, assigned, running, max_agents):
    ags = [{"state": s, "current_task": t, "last_active_at": la} for s, t, la in agents]
    s = scaling.signal(town="t", agents=ags, backlog=backlog, assigned_pending=assigned,
                       running_task_ids=running, now=NOW, max_agents=max_agents)
    assert s["queue_depth"] == s["pending_tasks"] + s["in_flight_tasks"]
    assert 0 <= s["desired_agents"] <= max_agents
    rec = s["scaling_recommendation"]
    assert rec in ("scale_up", "steady", "scale_down", "scale_to_zero")
    if rec == "scale_up":
        assert s["desired_agents"] > s["active_agents"]
    if rec in ("scale_down", "scale_to_zero"):
        assert s["pending_tasks"] == 0


# --- feed -------------------------------------------------------------------------------------
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=50), max_size=4),
       st.text(max_size=40))
def test_feed_decode_never_raises(fields, eid):
    ev = feed.decode(eid, {**fields, "data": '{"id": "forged", "x": 1}'} if fields else fields)
    assert ev["id"] == eid
    feed.matches(ev, agents={"a"}, mission="m")
    frame = feed.sse_frame(eid if feed.valid_stream_id(eid) else "1-0", fields)
    assert frame.endswith("\n\n") and frame.count("\ndata: ") == 1
    data = frame.split("\ndata: ", 1)[1][:-2]
    assert "\n" not in data and "\r" not in data
    json.loads(data)


def test_feed_filters_and_ids():
    ev = feed.decode("1-0", {"event_type": "task_assigned",
                             "data": '{"agent_id":"a1","mission_id":"m1","message":"x"}'})
    assert feed.matches(ev, agents={"a1"}) and not feed.matches(ev, agents={"a2"})
    assert feed.matches(ev, mission="m1") and not feed.matches(ev, mission="m2")
    assert feed.decode("2-0", {"data": "not json"})["unreadable"]
    raw = '{"event_type":"task_assigned","agent_id":"a1","mission_id":"m1","message":"x"}'
    frame = feed.sse_frame("1-0", {"event_type": "task_assigned", "data": raw})
    assert frame == f"id: 1-0\nevent: town\ndata: {raw}\n\n"       # tt's JSON as it is
    assert feed.may_match({"data": raw}, agents={"a1"}, mission=None)
    assert not feed.may_match({"data": raw}, agents={"a2"}, mission=None)
    assert not feed.may_match({"data": raw}, agents=None, mission="m2")
    for good in ("0", "1-0", "1796178296779-12"):
        assert feed.valid_stream_id(good)
    for bad in ("", "abc", "1-", "-1", "1-2-3", "1 0", "9" * 21, "1-x\nid: 2", "\u00b2-1",
                "1-0\n"):
        assert not feed.valid_stream_id(bad)


# --- header budget ----------------------------------------------------------------------------
def test_budgeted_reader():
    r = _Budgeted(io.BytesIO(b"a: 1\r\nb: 2\r\n\r\n"), 100)
    assert r.readline(65537) == b"a: 1\r\n"
    r = _Budgeted(io.BytesIO(b"x" * 50 + b"\r\n"), 20)
    with pytest.raises(_TooLarge):
        r.readline(65537)


def test_url_of_wildcards():
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        assert url_of(s).startswith("http://127.0.0.1:")


# --- config -----------------------------------------------------------------------------------
def _cfg(http, env=None):
    return config.from_dict({"http": http}, "/tmp/x/t.yaml", env=env or {})


@pytest.mark.parametrize("listen", ["0.0.0.0:8474", "[::]:8474", "192.168.1.5:80"])
def test_non_loopback_needs_a_token(listen):
    with pytest.raises(config.ConfigError) as e:
        _cfg({"listen": listen})
    assert e.value.problems[0][0] == "http.listen"
    assert _cfg({"listen": listen, "token": TOKEN}).http.listen == listen


def test_listen_default_and_env():
    assert config.from_dict({}, "/tmp/x/t.yaml", env={}).http.listen == "127.0.0.1:8474"
    assert _cfg({}, env={"TINYTOWND_HTTP_LISTEN": "off"}).http.listen is None
    assert _cfg({}, env={"TINYTOWND_HTTP_LISTEN": "127.0.0.1:0"}).http.listen == "127.0.0.1:0"
    # the file wins over the environment
    assert _cfg({"listen": "127.0.0.1:9"}, env={"TINYTOWND_HTTP_LISTEN": "off"}).http.listen \
        == "127.0.0.1:9"
    with pytest.raises(config.ConfigError) as e:
        _cfg({}, env={"TINYTOWND_HTTP_LISTEN": "0.0.0.0:1"})
    assert e.value.problems[0][0] == "http.listen"
    with pytest.raises(config.ConfigError) as e:
        _cfg({}, env={"TINYTOWND_HTTP_LISTEN": "nonsense"})
    assert e.value.problems[0][0] == "TINYTOWND_HTTP_LISTEN"


@pytest.mark.parametrize("http,key", [
    ({"listen": "localhost"}, "http.listen"), ({"listen": "host.example:80"}, "http.listen"),
    ({"listen": "127.0.0.1:70000"}, "http.listen"), ({"token": "short"}, "http.token"),
    ({"token": "has space 0123456789"}, "http.token"),
    ({"token": TOKEN, "token_file": "t"}, "http.token_file"),
    ({"token_file": "/nonexistent/token"}, "http.token_file"),
    ({"max_connections": 0}, "http.max_connections"),
    ({"max_request_bytes": 10 ** 9}, "http.max_request_bytes"),
    ({"header_timeout_s": 0}, "http.header_timeout_s")])
def test_bad_http_config_names_the_key(http, key):
    with pytest.raises(config.ConfigError) as e:
        _cfg(http)
    assert e.value.problems[0][0] == key


def test_token_file(tmp_path):
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\nignored\n")
    cfg = config.from_dict({"http": {"token_file": str(f), "listen": "0.0.0.0:1"}},
                           str(tmp_path / "t.yaml"), env={})
    assert auth.resolve_token(cfg) == TOKEN
    f.write_text("")
    with pytest.raises(config.ConfigError):
        config.from_dict({"http": {"token_file": str(f)}}, str(tmp_path / "t.yaml"), env={})


def test_token_never_in_the_reload_diff():
    old = _cfg({"token": TOKEN})
    new = _cfg({"token": TOKEN[::-1]})
    text = " ".join(c.describe() for c in config.diff(old, new))
    assert "http.token" in text and TOKEN not in text and TOKEN[::-1] not in text


@given(st.text(max_size=40))
def test_listen_parsing_fuzz(text):
    try:
        cfg = _cfg({"listen": text, "token": TOKEN})
    except config.ConfigError as e:
        assert e.problems[0][0] == "http.listen"
    else:
        assert cfg.http.listen == text


def test_journal_prefix_render(monkeypatch, tmp_path):
    from tinytownd import logs
    monkeypatch.setattr(logs._State, "journal", True)
    monkeypatch.setattr(logs._State, "path", None)
    assert logs._render(None, "error", {"level": "error", "event": "x"}).startswith('<3>{"')
    assert logs._render(None, "info", {"level": "info", "event": "x"}).startswith("<6>{")
    monkeypatch.setattr(logs._State, "journal", False)
    assert logs._render(None, "info", {"level": "info", "event": "x"}).startswith("{")
    monkeypatch.setenv("JOURNAL_STREAM", "junk")
    assert logs._stdout_is_journal() is False
    del os.environ["JOURNAL_STREAM"]


def test_round_end_counts_reported_tokens_and_cost():
    from prometheus_client import generate_latest
    from tinytownd import metrics

    def sample(line_start):
        for line in generate_latest(metrics.REGISTRY).decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    before = sample('tinytownd_tokens_total{cli="unit",kind="input"}')
    metrics.round_end("unit", "retry", 2.0, "rate_limited",
                      usage={"input_tokens": 7, "cost_usd": 0.5, "bad_tokens": -3,
                             "odd_tokens": "12", "turns": 2})
    assert sample('tinytownd_tokens_total{cli="unit",kind="input"}') == before + 7
    assert sample('tinytownd_cost_usd_total{cli="unit"}') >= 0.5
    assert sample('tinytownd_tokens_total{cli="unit",kind="bad"}') == 0
    assert sample('tinytownd_retries_total{class="rate_limited",cli="unit"}') >= 1
