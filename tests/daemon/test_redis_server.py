"""The owned redis-server (supervision, adoption, TLS, refusals) and external mode."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.daemon import free_port
from tests.support.helpers import RedisServer, wait_for
from tinytownd.daemon.pidfile import pid_alive

NO_RETRY = Retry(NoBackoff(), 0)


def test_kill9_redis_child_is_replaced(daemon):
    daemon.start()
    st = daemon.status()
    old = st["redis"]["pid"]
    daemon.redis().set("k", "v")
    os.kill(old, signal.SIGKILL)

    def replaced():
        s = daemon.status()
        r = s["redis"]
        return s if r["pid"] and r["pid"] != old and r["ready"] else None
    st = wait_for(replaced, 15, what="a new redis child")
    assert st["redis"]["restarts"] == 1
    assert daemon.redis().ping()
    assert daemon.proc.poll() is None
    events = [json.loads(line) for line in daemon.stdout_lines()]
    died = [e for e in events if e["event"] == "redis-server exited; restarting it"]
    assert died and died[0]["returncode"] == -9 and died[0]["level"] == "error"
    assert daemon.stop() == 0


def _start_like_owned(root, *, cwd, sock, pidfile=True) -> subprocess.Popen:
    """A redis-server as a killed daemon would leave it: cwd = data dir, socket, pid file."""
    cwd.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--dir", str(cwd),
            "--appendonly", "yes", "--save", "3600 1", "--daemonize", "no",
            "--logfile", str(cwd / "other.log")]
    if pidfile:
        args += ["--pidfile", str(cwd / "redis.pid")]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    c = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
    wait_for(lambda: sock.exists() and _ping(c), 10, what="manual redis")
    return p


def _ping(c):
    try:
        return c.ping()
    except redis.ConnectionError:
        return False


@pytest.mark.parametrize("with_pidfile", [True, False])
def test_leftover_child_is_shut_down_and_replaced(daemon, with_pidfile):
    left = _start_like_owned(daemon.root, cwd=daemon.root / "redis", sock=daemon.redis_sock,
                             pidfile=with_pidfile)
    try:
        c = redis.Redis(unix_socket_path=str(daemon.redis_sock), decode_responses=True)
        c.set("from-before", "kept")
        daemon.start()
        assert left.wait(10) == 0                  # clean SHUTDOWN, not a kill
        st = daemon.status()
        assert st["redis"]["pid"] != left.pid
        assert daemon.redis().get("from-before") == "kept"
        assert daemon.stop() == 0
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()


def test_foreign_server_on_our_socket_is_left_alone(daemon):
    foreign = _start_like_owned(daemon.root, cwd=daemon.root / "elsewhere", sock=daemon.redis_sock)
    try:
        daemon.start(wait=False)
        assert daemon.proc.wait(20) == 69
        assert "not tinytownd's redis-server" in (daemon.root / "stderr.log").read_text()
        assert foreign.poll() is None              # never killed
        assert not daemon.control_sock.exists()      # start failure cleaned up
    finally:
        foreign.kill()
        foreign.wait()


def test_stale_socket_and_pidfile_are_cleared(daemon):
    (daemon.root / "redis").mkdir()
    (daemon.root / "redis" / "redis.pid").write_text("1\n")     # pid 1 is not our redis
    import socket as s
    sk = s.socket(s.AF_UNIX, s.SOCK_STREAM)
    sk.bind(str(daemon.redis_sock))                 # a socket file nobody listens on
    sk.close()
    cs = s.socket(s.AF_UNIX, s.SOCK_STREAM)
    cs.bind(str(daemon.control_sock))               # a stale control socket too
    cs.close()
    daemon.start()
    assert daemon.redis().ping()
    assert pid_alive(1)
    assert daemon.stop() == 0


def test_nonloopback_bind_without_password_refused(daemon):
    daemon.write(redis={"socket": None, "bind": "0.0.0.0", "port": free_port()})
    r = daemon.cli("check-config")
    assert r.returncode == 78 and ": redis.bind: " in r.stderr and "password" in r.stderr
    daemon.start(wait=False)
    assert daemon.proc.wait(20) == 78
    # with a password it is fine, over TCP
    port = free_port()
    daemon.write(redis={"socket": None, "bind": "0.0.0.0", "port": port, "password": "s3cret-pw"})
    daemon.start()
    st = daemon.status()
    assert st["redis"]["url"] == f"redis://:****@127.0.0.1:{port}"
    assert redis.Redis(port=port, password="s3cret-pw").ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=NO_RETRY).ping()
    assert "s3cret-pw" not in daemon.stdout_path.read_text()
    assert "s3cret-pw" not in open(f"/proc/{st['redis']['pid']}/cmdline").read()
    assert daemon.stop() == 0


def test_external_mode_and_wrong_password(daemon):
    ext = RedisServer(daemon.root / "ext", password="ext-pw-123").start()
    try:
        url = f"unix://{ext.sock}?password=ext-pw-123"
        daemon.write(redis={"url": url})
        daemon.start()
        r = daemon.cli("status", "--json")
        st = json.loads(r.stdout)
        assert st["redis"]["mode"] == "external" and st["redis"]["ready"] is True
        assert st["redis"]["version"].startswith("7")
        assert "ext-pw-123" not in r.stdout
        assert not (daemon.root / "redis").exists()              # no child, no data dir
        assert daemon.stop() == 0
        assert ext.client().ping()                           # never stopped by us
        assert "ext-pw-123" not in daemon.stdout_path.read_text()

        daemon.write(redis={"url": f"unix://{ext.sock}?password=wrong-pw-456"})
        r = daemon.cli("run")
        assert r.returncode == 69
        assert "authentication" in r.stderr.lower()
        assert "wrong-pw-456" not in r.stdout + r.stderr

        # REDIS_URL overrides the file; an unreachable one is 69 too
        r = daemon.cli("run", env={"REDIS_URL": "redis://127.0.0.1:1"})
        assert r.returncode == 69 and "cannot connect" in r.stderr
    finally:
        ext.stop()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_tls_child_reachable_over_rediss(daemon):
    d = daemon.root
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tt-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
    port = free_port()
    daemon.write(redis={"socket": None, "port": port,
                      "tls": {"enabled": True, "cert": "server.crt", "key": "server.key",
                              "ca_cert": "ca.crt"}})
    daemon.start()
    st = daemon.status()
    assert st["redis"]["url"] == f"rediss://127.0.0.1:{port}"
    c = redis.Redis.from_url(f"rediss://127.0.0.1:{port}", ssl_ca_certs=str(d / "ca.crt"))
    assert c.ping()
    with pytest.raises(redis.ConnectionError):     # plain TCP is not served
        redis.Redis(port=port, socket_timeout=2, retry=NO_RETRY).ping()
    assert daemon.stop() == 0


def test_old_redis_server_refused(daemon):
    fake = daemon.root / "redis-server-6"
    fake.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=00000000:0 malloc=libc bits=64'\n")
    fake.chmod(0o755)
    daemon.write(redis={"server": str(fake)})
    r = daemon.cli("check-config")
    assert r.returncode == 78 and ": redis.server: " in r.stderr and "6.2.14" in r.stderr
    r = daemon.cli("run")
    assert r.returncode == 69 and "6.2.14" in r.stderr and ">= 7.0" in r.stderr


def test_child_that_does_not_come_up_reports_the_log_tail(daemon):
    (daemon.root / "bad.crt").write_text("not a certificate\n")
    (daemon.root / "bad.key").write_text("not a key\n")
    daemon.write(redis={"socket": None, "port": free_port(),
                      "tls": {"enabled": True, "cert": "bad.crt", "key": "bad.key"}})
    r = daemon.cli("run")
    assert r.returncode == 69
    assert "before it was ready" in r.stderr and "last lines of" in r.stderr
    assert "redis.log" in r.stderr
    assert not list(daemon.root.glob("*.sock"))          # nothing left behind
