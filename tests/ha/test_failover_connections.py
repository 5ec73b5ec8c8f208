"""After a SENTINEL FAILOVER the former primary stays a writable master until the Sentinels convert
it (~10 s): anything still connected to it writes into a copy that is thrown away, while the rest
of the daemon works on the new primary. The daemon's primary watch closes every connection to the
old one as soon as it sees the change, idle or in use: a parked BLMOVE returns with an error
instead of taking from the old copy, and a kept script connection reconnects to the new one."""
import gevent
import gevent.event
import pytest
import redis
import structlog
import yaml

from tests.support.helpers import wait_for
from tinytownd import config
from tinytownd.daemon.failover import PrimaryWatch
from tinytownd.daemon.redis_clients import make_clients
from tinytownd.store.scripts import Scripts


def _old_still_master(ha, port) -> None:
    role = ha.nodes[port].client(socket_timeout=1).info("replication")["role"]
    if role != "master":    # the Sentinels converted it already: nothing left to tell apart
        pytest.fail("the old primary was demoted before the checks ran (a very slow machine?)")


def test_a_primary_change_closes_every_connection_to_the_old_primary(ha, tmpdir_short):
    root = tmpdir_short / "town"
    root.mkdir()
    path = root / "tinytownd.yaml"
    path.write_text(yaml.safe_dump({"town": {"name": "t", "root": str(root)},
                                    "redis": ha.config(), "agents": []}))
    cfg = config.load(str(path), env={}, check_files=False)
    clients = make_clients(cfg, blocking_connections=2)
    stopping = gevent.event.Event()
    old = ha.primary_port()
    watch = PrimaryWatch(lambda: cfg, clients, structlog.get_logger("test"), stopping,
                         primary=("127.0.0.1", old))
    scripts = Scripts(clients.cmd, keep=2)
    watcher = gevent.spawn(watch.run)
    heard, errors = [], []

    def listen():       # the mission engine's notify loop, in small
        while not stopping.is_set():
            ps = clients.block.pubsub(ignore_subscribe_messages=True)
            try:
                ps.subscribe("notes")
                while not stopping.is_set():
                    msg = ps.get_message(timeout=0.25)
                    if msg:
                        heard.append(msg["data"])
            except (redis.RedisError, OSError) as e:
                errors.append(e)
            finally:
                ps.close()

    listener = gevent.spawn(listen)
    try:
        scripts.counter(keys=["c"], args=["n", 1])          # a kept connection, to the old one
        assert scripts._free and scripts._free[0].port == old
        parked = gevent.spawn(clients.block.blmove, "src", "dst", 0, "LEFT", "RIGHT")
        gevent.sleep(0.3)
        assert not parked.dead                               # parked on the old primary
        new = ha.failover(demoted=False)
        wait_for(lambda: watch.failovers == 1, 10, what="the watch saw the change")
        _old_still_master(ha, old)
        oldc = ha.nodes[old].client()
        oldc.rpush("src", "taken from the old copy")         # the old copy still takes writes
        wait_for(lambda: parked.dead, 5, what="the parked BLMOVE ended")
        assert isinstance(parked.exception, redis.ConnectionError), parked.value
        scripts.counter(keys=["c"], args=["n", 1])
        newc = ha.nodes[new].client()
        assert newc.hget("c", "n") == "2"                    # the kept connection moved over
        assert oldc.hget("c", "n") == "1"
        _old_still_master(ha, old)
        assert all(c.port == new for c in scripts._free)
        # the pub/sub listener lost its connection as a Redis error and listens on the new one
        wait_for(lambda: newc.publish("notes", "after") == 1, 10, what="resubscribed")
        wait_for(lambda: "after" in heard, 5, what="a note from the new primary")
        assert not listener.dead, listener.exception
    finally:
        stopping.set()
        listener.join(2)
        watcher.kill()
        scripts.close()
        clients.close()
