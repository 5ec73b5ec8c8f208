"""The daemon as a real process: `tinytownd run -c …` with its own redis-server child."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time


from tests.support.helpers import run_cli, wait_for
from tinytownd.daemon.pidfile import pid_alive




# ----------------------------------------------------------------------------- tests
def test_start_status_stop_leaves_nothing(daemon):
    daemon.start()
    r = daemon.cli("status")
    assert r.returncode == 0, r.stderr
    assert "running" in r.stdout and "redis: owned" in r.stdout
    r = daemon.cli("status", "--json")
    assert r.returncode == 0
    st = json.loads(r.stdout)
    for key in ("pid", "town", "uptime_s", "config_path", "reloads", "redis", "services"):
        assert key in st
    assert st["pid"] == daemon.proc.pid and st["town"] == "t" and st["reloads"] == 0
    assert st["config_path"] == str(daemon.cfg_path)
    red = st["redis"]
    assert red["mode"] == "owned" and red["ready"] is True and red["version"].startswith("7")
    assert red["socket"] == str(daemon.redis_sock)
    assert st["services"]["redis"] == "running"
    rpid = red["pid"]
    assert daemon.redis().ping()
    assert stat.S_IMODE(os.stat(daemon.control_sock).st_mode) == 0o600

    r = daemon.cli("stop")
    assert r.returncode == 0, r.stderr
    assert daemon.proc.wait(10) == 0
    assert not pid_alive(rpid)
    assert not daemon.control_sock.exists()
    assert not daemon.redis_sock.exists()
    assert not (daemon.root / "redis" / "redis.pid").exists()
    assert daemon.cli("status").returncode == 3
    assert daemon.cli("stop").returncode == 0        # stopping a stopped daemon is fine

    # every stdout line is a JSON object with the standard fields
    lines = daemon.stdout_lines()
    assert len(lines) >= 4
    for line in lines:
        obj = json.loads(line)
        for key in ("timestamp", "level", "event", "logger"):
            assert key in obj, line
        assert obj["timestamp"].endswith("Z")
    events = [json.loads(line)["event"] for line in lines]
    assert "ready" in events and events[-1] == "stopped"


def test_owned_child_settings_and_files_under_root(daemon):
    daemon.write(redis={"maxmemory": "32mb", "maxmemory_policy": "allkeys-lru", "save": "900 1",
                      "appendonly": True, "appendfsync": "always"})
    daemon.start()
    c = daemon.redis()
    got = {k: c.config_get(k)[k] for k in ("maxmemory", "maxmemory-policy", "save", "appendonly",
                                           "appendfsync", "dir", "dbfilename", "appendfilename",
                                           "logfile", "pidfile", "port", "unixsocketperm",
                                           "supervised", "daemonize")}
    data = str(daemon.root / "redis")
    assert got["maxmemory"] == str(32 * 1024 * 1024)
    assert got["maxmemory-policy"] == "allkeys-lru"
    assert got["save"] == "900 1"
    assert got["appendonly"] == "yes" and got["appendfsync"] == "always"
    assert got["dir"] == data
    assert got["logfile"].startswith(data) and got["pidfile"].startswith(data)
    assert got["dbfilename"] == "dump.rdb" and got["port"] == "0"
    assert got["unixsocketperm"] == "700"
    assert got["daemonize"] == "no" and got["supervised"] == "no"
    pid = daemon.status()["redis"]["pid"]
    env = open(f"/proc/{pid}/environ", "rb").read()
    assert b"NOTIFY_SOCKET" not in env
    assert (daemon.root / "redis" / "redis.log").exists()
    assert (daemon.root / "redis" / "appendonlydir").is_dir()
    assert daemon.stop() == 0


def test_reload_live_and_invalid(daemon):
    daemon.start()
    pid = daemon.status()["redis"]["pid"]
    daemon.write(redis={"maxmemory": "16mb", "socket": "other.sock"}, logging={"level": "debug"})
    r = daemon.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "redis.maxmemory" in r.stdout and "logging.level" in r.stdout
    assert "needs a restart: redis.socket" in r.stdout
    c = daemon.redis()
    assert c.config_get("maxmemory")["maxmemory"] == str(16 * 1024 * 1024)
    st = daemon.status()
    assert st["redis"]["pid"] == pid and st["reloads"] == 1 and st["log_level"] == "debug"
    assert st["redis"]["socket"] == str(daemon.redis_sock)   # restart-only: not applied

    # invalid: refused with FILE: KEY: problem, the old config keeps running
    daemon.write_raw(daemon.cfg_path.read_text() + "redis_typo: 1\n")
    r = daemon.cli("reload")
    assert r.returncode == 78
    assert f"{daemon.cfg_path}: redis_typo: unknown key" in r.stderr
    st = daemon.status()
    assert st["state"] == "running" and st["reloads"] == 1 and st["last_reload"]["ok"] is False
    assert c.config_get("maxmemory")["maxmemory"] == str(16 * 1024 * 1024)

    # SIGHUP goes through the same path
    daemon.write(redis={"maxmemory": "8mb", "maxmemory_policy": "allkeys-lfu"})
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: c.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lfu",
             15, what="SIGHUP reload")
    assert c.config_get("maxmemory")["maxmemory"] == str(8 * 1024 * 1024)
    assert daemon.status()["reloads"] == 2
    assert daemon.stop() == 0
    for line in daemon.stdout_lines():
        json.loads(line)


def test_sd_notify_ready_reloading_stopping_watchdog(daemon):
    path = str(daemon.root / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(15)
    got: list[str] = []

    def recv_until(pred):
        while True:
            msg = s.recv(4096).decode()
            got.append(msg)
            if pred(msg):
                return msg
    try:
        daemon.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, wait=False)
        msg = recv_until(lambda m: "READY=1" in m)
        assert "STATUS=" in msg
        recv_until(lambda m: m == "WATCHDOG=1")
        daemon.wait_ready()
        assert daemon.cli("reload").returncode == 0
        msg = recv_until(lambda m: "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in msg           # same datagram
        usec = int(msg.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
        recv_until(lambda m: "READY=1" in m)
        daemon.proc.send_signal(signal.SIGTERM)
        recv_until(lambda m: "STOPPING=1" in m)
        assert daemon.proc.wait(20) == 0
    finally:
        s.close()
    # the redis child must not talk to systemd
    assert not any("redis" in m.lower() for m in got)


def test_daemonize_pidfile_and_second_instance_refused(daemon):
    pidfile = daemon.root / "run" / "tinytownd.pid"
    r = run_cli("run", "-c", str(daemon.cfg_path), "--daemonize", "--pidfile", str(pidfile))
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text().strip())
    try:
        assert pid_alive(pid)
        st = daemon.wait_ready()
        assert st["pid"] == pid
        # second instance: refused, whichever way it is started
        r = run_cli("run", "-c", str(daemon.cfg_path), "--daemonize", "--pidfile", str(pidfile))
        assert r.returncode == 73 and str(pid) in r.stderr
        r = run_cli("run", "-c", str(daemon.cfg_path))
        assert r.returncode == 73 and "another tinytownd" in r.stderr
        assert daemon.status()["pid"] == pid       # the first one is untouched
        logs = daemon.root / "logs" / "tinytownd.log"
        assert logs.exists() and json.loads(logs.read_text().splitlines()[0])["event"]
        r = daemon.cli("stop", "--timeout", "20")
        assert r.returncode == 0, r.stderr
        assert not pid_alive(pid)
        assert not pidfile.exists()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        daemon.redis_pids.update(daemon.redis_pids)


def test_kill9_daemon_then_restart_keeps_data(daemon):
    daemon.start()
    old_redis = daemon.status()["redis"]["pid"]
    c = daemon.redis()
    c.set("survivor", "yes")
    c.rpush("queue", *range(100))
    daemon.proc.kill()
    daemon.proc.wait(10)
    # the child dies with its parent (PR_SET_PDEATHSIG=SIGTERM: redis saves and exits)
    wait_for(lambda: not pid_alive(old_redis), 15, what="orphan redis exit")
    daemon.start()
    st = daemon.status()
    assert st["redis"]["pid"] != old_redis and st["redis"]["ready"]
    c = daemon.redis()
    assert c.get("survivor") == "yes" and c.llen("queue") == 100
    assert daemon.stop() == 0


def test_signals_term_and_usr1_reopen(daemon):
    daemon.write(logging={"file": "logs/d.log"})
    daemon.start()
    log = daemon.root / "logs" / "d.log"
    assert log.exists()
    log.rename(daemon.root / "logs" / "d.log.1")
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), 15,
             what="reopen")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "stopped"
    assert daemon.stdout_path.read_text() == ""      # logging.file: nothing on stdout
