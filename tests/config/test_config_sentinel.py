"""redis.sentinel / redis.wait_replicas: alternatives to redis.url, every key checked and named
(hand-picked and generated bad values)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytownd import config
from tinytownd.config import checks

F = "/tmp/x/t.yaml"
NODES = ["127.0.0.1:26379", "[::1]:26380", "sentinel-2.example:26381"]


def _cfg(redis: dict):
    return config.from_dict({"redis": redis}, F, env={}, check_files=False)


def _err(redis: dict, env=None) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"redis": redis}, F, env=env or {}, check_files=False)
    return str(e.value)


def test_a_sentinel_section_means_no_owned_redis():
    c = _cfg({"sentinel": {"master": "mymaster", "nodes": NODES}, "wait_replicas": 1})
    assert not c.owned_redis and c.sentinel.master == "mymaster"
    assert c.redis.wait_replicas == 1 and c.redis.wait_timeout_ms == 100
    assert "mymaster" in c.redis_url()


def test_sentinel_and_url_both_set_names_both_keys():
    msg = _err({"url": "redis://10.0.0.1:6379",
                "sentinel": {"master": "mymaster", "nodes": NODES}})
    assert "redis.url" in msg and "redis.sentinel" in msg


def test_redis_url_env_does_not_replace_a_sentinel_section():
    c = config.from_dict({"redis": {"sentinel": {"master": "m", "nodes": NODES}}}, F,
                         env={"REDIS_URL": "redis://10.9.9.9:6379"}, check_files=False)
    assert c.redis.url is None and c.sentinel is not None


@pytest.mark.parametrize("redis,key", [
    ({"sentinel": {"master": "m"}}, "redis.sentinel.nodes"),
    ({"sentinel": {"nodes": NODES}}, "redis.sentinel.master"),
    ({"sentinel": {"master": "has space", "nodes": NODES}}, "redis.sentinel.master"),
    ({"sentinel": {"master": "x" * 129, "nodes": NODES}}, "redis.sentinel.master"),
    ({"sentinel": {"master": "m", "nodes": ["nohost"]}}, "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": ["h:0"]}}, "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": ["h:65536"]}}, "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": ["h:1", "h:1"]}}, "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": [f"h:{i + 1}" for i in range(17)]}},
     "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": [26379]}}, "redis.sentinel.nodes"),
    ({"sentinel": {"master": "m", "nodes": NODES, "bogus": 1}}, "redis.sentinel.bogus"),
    ({"wait_replicas": 17, "url": "redis://h:1"}, "redis.wait_replicas"),
    ({"wait_replicas": -1, "url": "redis://h:1"}, "redis.wait_replicas"),
    ({"wait_replicas": 1}, "redis.wait_replicas"),          # an owned Redis has no replicas
    ({"wait_timeout_ms": 0}, "redis.wait_timeout_ms"),
    ({"wait_timeout_ms": 10001}, "redis.wait_timeout_ms"),
])
def test_bad_sentinel_settings_are_refused_naming_the_key(redis, key):
    assert key in _err(redis)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text(max_size=5))))
def test_host_port_takes_or_refuses_anything(value):
    try:
        host, port = checks.host_port(value)
    except checks.Invalid:
        return
    assert 1 <= port <= 65535 and host and isinstance(value, str) and value.endswith(str(port))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=20))
def test_any_nodes_value_is_a_config_or_a_config_error(nodes):
    try:
        c = _cfg({"sentinel": {"master": "m", "nodes": nodes}})
    except config.ConfigError as e:
        assert "redis.sentinel" in str(e)
    else:
        assert 1 <= len(c.sentinel.nodes) <= 16
