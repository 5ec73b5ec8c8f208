"""Config validation: every bad input names the file, the key and the problem."""
import pytest

from tinytownd import config


def _err(data):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(data, "/tmp/x/t.yaml", env={})
    return str(e.value)


@pytest.mark.parametrize("data,key,words", [
    ({"town": {"nmae": "x"}}, "town.nmae", "did you mean 'name'"),
    ({"redis": {"appendfsync": "sometimes"}}, "redis.appendfsync", "not one of"),
    ({"redis": {"maxmemory": "12zb"}}, "redis.maxmemory", "not a size"),
    ({"redis": {"port": 70000}}, "redis.port", "above the maximum"),
    ({"redis": {"appendonly": "yes"}}, "redis.appendonly", "true or false"),
    ({"redis": {"save": "60"}}, "redis.save", "pairs"),
    ({"redis": {"url": "http://x"}}, "redis.url", "scheme"),
    ({"town": {"name": "a:b"}}, "town.name", "letters"),
    ({"logging": {"level": "loud"}}, "logging.level", "not one of"),
    ({"agents": [{"name": "supervisor", "cli": "claude"}]}, "agents[0].name", "reserved"),
    ({"agents": [{"name": "w", "cli": "claud"}]}, "agents[0].cli", "did you mean 'claude'"),
    ({"agent_clis": {"x": {"command": ""}}}, "agent_clis.x.command", "required"),
    ({"redis": {"socket": None, "bind": "0.0.0.0", "port": 7000}}, "redis.bind", "password"),
    ({"redis": {"socket": None}}, "redis.port", "must be set"),
    ({"runtime": {"heartbeat_interval_s": 30}}, "runtime.heartbeat_interval_s", "maximum"),
    ({"redis": {"tls": {"enabled": True, "cert": "nope.pem", "key": "k"}, "port": 7000}},
     "redis.tls.cert", "not found"),
    ({"missions": {"lease_ttl_s": "long"}}, "missions.lease_ttl_s", "number"),
    ([1, 2], "", "mapping"),
])
def test_bad_input_names_key(data, key, words):
    msg = _err(data)
    assert msg.startswith("/tmp/x/t.yaml: ")
    assert f": {key}: " in msg or (not key and "mapping" in msg)
    assert words in msg


def test_defaults_and_sizes():
    c = config.from_dict({"redis": {"maxmemory": "64mb"}}, "/tmp/x/t.yaml", env={})
    assert c.redis.maxmemory == 64 * 1024 * 1024
    assert str(c.root) == "/tmp/x"
    assert c.redis_url() == "unix:///tmp/x/redis.sock"
    assert c.redis.appendonly is True and c.redis.maxmemory_policy == "noeviction"


def test_env_overrides():
    c = config.from_dict({"redis": {"password": "a"}}, "/tmp/x/t.yaml",
                         env={"TINYTOWN_REDIS_PASSWORD": "b"})
    assert c.redis.password == "b"
    c = config.from_dict({}, "/tmp/x/t.yaml", env={"REDIS_URL": "redis://:pw@127.0.0.1:1/0"})
    assert not c.owned_redis and c.redis_url(redacted=True) == "redis://:****@127.0.0.1:1/0"


def test_agents_count_expand_and_diff():
    c = config.from_dict({"agent_clis": {"e": "cat"},
                          "agents": [{"name": "w", "cli": "e", "count": 2}]}, "/t/c.yaml", env={})
    assert [a.name for a in c.expanded_agents()] == ["w-1", "w-2"]
    c2 = config.from_dict({"agent_clis": {"e": "cat"}, "redis": {"maxmemory": 5, "port": 9},
                           "agents": [{"name": "w", "cli": "e", "count": 2}]}, "/t/c.yaml", env={})
    ch = {x.key: x.live for x in config.diff(c, c2)}
    assert ch == {"redis.maxmemory": True, "redis.port": False}
