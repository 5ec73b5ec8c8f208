"""The raw pipeline (heartbeat pass, town view) against a real redis-server: replies in order,
error replies in their place (junk of the wrong type), replies larger than a socket read,
surrogate-escaped values, and the same through the reply-by-reply fallback."""
import pytest

import redis

from tinytownd.daemon.redis_clients import make_pool
from tinytownd.store import raw_pipe


@pytest.fixture
def r(redis_server):
    c = redis.Redis(connection_pool=make_pool(redis_server.url, max_connections=4,
                                              blocking=False))
    yield c
    c.close()


@pytest.mark.parametrize("fast", [True, False])
def test_raw_pipeline_replies_in_order_with_errors_in_place(r, monkeypatch, fast):
    if not fast:      # a redis-py without a hiredis reader to read from: reply by reply
        monkeypatch.setattr(raw_pipe, "hiredis", type("H", (), {"Reader": type(None)}))
    r.set("s", "x")
    r.rpush("l", *[f"v{i}" for i in range(3000)])
    r.hset("h", mapping={"a": "1", "b": "\udcff"})          # not UTF-8 on the wire
    r.set(b"big", b"y" * 300_000)
    cmds = [("LLEN", "l"), ("LLEN", "s"), ("HMGET", "h", "a", "b", "c"),
            ("LRANGE", "l", 0, -1), ("GET", "big"), ("PING",)] * 50
    out = raw_pipe.raw_pipeline(r, cmds)
    assert len(out) == len(cmds)
    for i in range(0, len(out), 6):
        n, wrong, fields, items, big, pong = out[i:i + 6]
        assert n == 3000 and items[0] == "v0" and items[-1] == "v2999" and len(items) == 3000
        assert isinstance(wrong, redis.ResponseError) and "WRONGTYPE" in str(wrong)
        assert fields == ["1", "\udcff", None]
        assert big == "y" * 300_000 and pong in ("PONG", b"PONG", True)
    assert r.ping()                                # the connection went back to the pool fine
