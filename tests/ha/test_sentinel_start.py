"""Starting through Sentinels: the primary found, no owned redis-server; the errors that stop a
start (exit 69, naming what was tried); a Redis Cluster node refused."""
import pytest

from tests.support.daemon import DaemonProcess, free_port
from tests.support.sentinel import Node
from tinytownd import exitcodes

AGENTS = {"agent_clis": {"e": {"command": "cat >/dev/null; echo ok"}},
          "agents": [{"name": "w", "cli": "e", "count": 2}]}


def _exit(d: DaemonProcess, timeout=30) -> tuple[int, str]:
    d.start(wait=False)
    rc = d.proc.wait(timeout)
    return rc, (d.root / "stderr.log").read_text() + "\n".join(d.stdout_lines())


def test_daemon_starts_through_the_sentinels(ha, tmpdir_short):
    d = DaemonProcess(tmpdir_short / "d", redis=ha.config(), **AGENTS)
    try:
        st = d.start().wait_ready()
        r = st["redis"]
        assert r["mode"] == "sentinel" and r["master"] == "mymaster"
        assert r["primary"] == f"127.0.0.1:{ha.primary_port()}"
        assert "pid" not in r or r["pid"] is None           # no redis-server of its own
        assert not (d.root / "redis.sock").exists()
        # the daemon's keys are on the primary the Sentinels name
        c = ha.primary().client()
        assert c.exists("tt:t:daemons") or c.keys("tt:t:*")
        assert d.stop() == 0
    finally:
        d.cleanup()


def test_unknown_master_name_is_exit_69_naming_every_node(ha, tmpdir_short):
    cfg = ha.config()
    cfg["sentinel"]["master"] = "nosuchmaster"
    d = DaemonProcess(tmpdir_short / "d", redis=cfg, **AGENTS)
    try:
        rc, out = _exit(d)
        assert rc == exitcodes.UNAVAILABLE
        assert "nosuchmaster" in out
        for n in ha.sentinel_nodes:
            assert n in out and "does not know the master name" in out
    finally:
        d.cleanup()


def test_no_sentinel_answers_is_exit_69_naming_every_node(tmpdir_short):
    nodes = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    d = DaemonProcess(tmpdir_short / "d", redis={"sentinel": {"master": "m", "nodes": nodes}},
                      **AGENTS)
    try:
        rc, out = _exit(d)
        assert rc == exitcodes.UNAVAILABLE
        for n in nodes:
            assert f"{n}: cannot connect" in out
    finally:
        d.cleanup()


def test_sentinel_and_url_together_is_a_config_error_naming_both(tmpdir_short):
    d = DaemonProcess(tmpdir_short / "d", redis={"url": "redis://127.0.0.1:1",
                                                 "sentinel": {"master": "m",
                                                              "nodes": ["127.0.0.1:2"]}},
                      **AGENTS)
    try:
        rc, out = _exit(d)
        assert rc == exitcodes.CONFIG
        assert "redis.url" in out and "redis.sentinel" in out
    finally:
        d.cleanup()


@pytest.fixture
def cluster_node(tmpdir_short):
    n = Node(tmpdir_short / "cluster", extra=["--cluster-enabled", "yes",
                                              "--cluster-port", str(free_port()),
                                              "--cluster-config-file",
                                              str(tmpdir_short / "cluster" / "nodes.conf")])
    try:
        yield n.start()
    finally:
        n.kill()


def test_a_cluster_node_is_refused_at_connect(cluster_node, tmpdir_short):
    assert cluster_node.client().info("cluster")["cluster_enabled"] == 1
    d = DaemonProcess(tmpdir_short / "d",
                      redis={"url": f"redis://127.0.0.1:{cluster_node.port}"}, **AGENTS)
    try:
        rc, out = _exit(d)
        assert rc == exitcodes.UNAVAILABLE
        assert "Redis Cluster" in out and "hash tags" in out and "one town per shard" in out
    finally:
        d.cleanup()
