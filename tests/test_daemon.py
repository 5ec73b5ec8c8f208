"""The daemon as a real process: `tinytownd run -c …` with its own redis-server child.

Also home of `Town`, the helper the other daemon test files import.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from tests.helpers import run_cli, tinytownd_cmd
from tinytownd.daemon import control
from tinytownd.daemon.pidfile import pid_alive
from tests.helpers import wait_for  # noqa: F401,E402  (re-exported for the daemon tests)




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Town:
    """A config file in a short temp dir plus the daemon process run from it."""

    def __init__(self, root: Path, **sections):
        self.root = Path(root)
        self.cfg_path = self.root / "tinytownd.yaml"
        self.proc: subprocess.Popen | None = None
        self.redis_pids: set[int] = set()
        self.data = {}
        self.write(**sections)

    def write(self, **sections) -> None:
        base = {"town": {"name": "t", "root": str(self.root)}}
        self.data = _merge(base, sections)
        self.cfg_path.write_text(yaml.safe_dump(self.data))

    def write_raw(self, text: str) -> None:
        self.cfg_path.write_text(text)

    @property
    def control_sock(self) -> Path:
        return self.root / "tinytownd.sock"

    @property
    def redis_sock(self) -> Path:
        return self.root / "redis.sock"

    @property
    def stdout_path(self) -> Path:
        return self.root / "stdout.log"

    def cli(self, *args, env=None) -> subprocess.CompletedProcess:
        return run_cli(*args, "-c", str(self.cfg_path), env=env)

    def start(self, *extra, env=None, wait=True) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            tinytownd_cmd() + ["run", "-c", str(self.cfg_path), *extra],
            stdout=open(self.stdout_path, "ab"), stderr=open(self.root / "stderr.log", "ab"),
            env=full_env, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout=20.0) -> dict:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n"
                                     + (self.root / "stderr.log").read_text()[-3000:])
            try:
                st = self.status()
            except (control.NotRunning, control.ControlError, OSError):
                return None
            return st if st.get("state") == "running" else None
        st = wait_for(ready, timeout, what="daemon ready")
        if st["redis"].get("pid"):
            self.redis_pids.add(st["redis"]["pid"])
        return st

    def request(self, cmd, args=None, timeout=30.0) -> dict:
        return control.request(self.control_sock, cmd, args, timeout=timeout)

    def status(self) -> dict:
        st = self.request("status", timeout=5.0)
        if st.get("redis", {}).get("pid"):
            self.redis_pids.add(st["redis"]["pid"])
        return st

    def redis(self, **kw) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.redis_sock), decode_responses=True, **kw)

    def stop(self, timeout=30.0) -> int:
        assert self.proc is not None
        try:
            self.request("stop", timeout=5.0)
        except (control.NotRunning, control.ControlError):
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines() if self.stdout_path.exists() else []

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        pidf = self.root / "redis" / "redis.pid"
        try:
            self.redis_pids.add(int(pidf.read_text().strip()))
        except (OSError, ValueError):
            pass
        for pid in self.redis_pids:
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(str(self.root)):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def town(tmpdir_short):
    t = Town(tmpdir_short)
    try:
        yield t
    finally:
        t.cleanup()


# ----------------------------------------------------------------------------- tests
def test_start_status_stop_leaves_nothing(town):
    town.start()
    r = town.cli("status")
    assert r.returncode == 0, r.stderr
    assert "running" in r.stdout and "redis: owned" in r.stdout
    r = town.cli("status", "--json")
    assert r.returncode == 0
    st = json.loads(r.stdout)
    for key in ("pid", "town", "uptime_s", "config_path", "reloads", "redis", "services"):
        assert key in st
    assert st["pid"] == town.proc.pid and st["town"] == "t" and st["reloads"] == 0
    assert st["config_path"] == str(town.cfg_path)
    red = st["redis"]
    assert red["mode"] == "owned" and red["ready"] is True and red["version"].startswith("7")
    assert red["socket"] == str(town.redis_sock)
    assert st["services"]["redis"] == "running"
    rpid = red["pid"]
    assert town.redis().ping()
    assert stat.S_IMODE(os.stat(town.control_sock).st_mode) == 0o600

    r = town.cli("stop")
    assert r.returncode == 0, r.stderr
    assert town.proc.wait(10) == 0
    assert not pid_alive(rpid)
    assert not town.control_sock.exists()
    assert not town.redis_sock.exists()
    assert not (town.root / "redis" / "redis.pid").exists()
    assert town.cli("status").returncode == 3
    assert town.cli("stop").returncode == 0        # stopping a stopped daemon is fine

    # every stdout line is a JSON object with the standard fields
    lines = town.stdout_lines()
    assert len(lines) >= 4
    for line in lines:
        obj = json.loads(line)
        for key in ("timestamp", "level", "event", "logger"):
            assert key in obj, line
        assert obj["timestamp"].endswith("Z")
    events = [json.loads(line)["event"] for line in lines]
    assert "ready" in events and events[-1] == "stopped"


def test_owned_child_settings_and_files_under_root(town):
    town.write(redis={"maxmemory": "32mb", "maxmemory_policy": "allkeys-lru", "save": "900 1",
                      "appendonly": True, "appendfsync": "always"})
    town.start()
    c = town.redis()
    got = {k: c.config_get(k)[k] for k in ("maxmemory", "maxmemory-policy", "save", "appendonly",
                                           "appendfsync", "dir", "dbfilename", "appendfilename",
                                           "logfile", "pidfile", "port", "unixsocketperm",
                                           "supervised", "daemonize")}
    data = str(town.root / "redis")
    assert got["maxmemory"] == str(32 * 1024 * 1024)
    assert got["maxmemory-policy"] == "allkeys-lru"
    assert got["save"] == "900 1"
    assert got["appendonly"] == "yes" and got["appendfsync"] == "always"
    assert got["dir"] == data
    assert got["logfile"].startswith(data) and got["pidfile"].startswith(data)
    assert got["dbfilename"] == "dump.rdb" and got["port"] == "0"
    assert got["unixsocketperm"] == "700"
    assert got["daemonize"] == "no" and got["supervised"] == "no"
    pid = town.status()["redis"]["pid"]
    env = open(f"/proc/{pid}/environ", "rb").read()
    assert b"NOTIFY_SOCKET" not in env
    assert (town.root / "redis" / "redis.log").exists()
    assert (town.root / "redis" / "appendonlydir").is_dir()
    assert town.stop() == 0


def test_reload_live_and_invalid(town):
    town.start()
    pid = town.status()["redis"]["pid"]
    town.write(redis={"maxmemory": "16mb", "socket": "other.sock"}, logging={"level": "debug"})
    r = town.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "redis.maxmemory" in r.stdout and "logging.level" in r.stdout
    assert "needs a restart: redis.socket" in r.stdout
    c = town.redis()
    assert c.config_get("maxmemory")["maxmemory"] == str(16 * 1024 * 1024)
    st = town.status()
    assert st["redis"]["pid"] == pid and st["reloads"] == 1 and st["log_level"] == "debug"
    assert st["redis"]["socket"] == str(town.redis_sock)   # restart-only: not applied

    # invalid: refused with FILE: KEY: problem, the old config keeps running
    town.write_raw(town.cfg_path.read_text() + "redis_typo: 1\n")
    r = town.cli("reload")
    assert r.returncode == 78
    assert f"{town.cfg_path}: redis_typo: unknown key" in r.stderr
    st = town.status()
    assert st["state"] == "running" and st["reloads"] == 1 and st["last_reload"]["ok"] is False
    assert c.config_get("maxmemory")["maxmemory"] == str(16 * 1024 * 1024)

    # SIGHUP goes through the same path
    town.write(redis={"maxmemory": "8mb", "maxmemory_policy": "allkeys-lfu"})
    town.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: c.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lfu",
             15, what="SIGHUP reload")
    assert c.config_get("maxmemory")["maxmemory"] == str(8 * 1024 * 1024)
    assert town.status()["reloads"] == 2
    assert town.stop() == 0
    for line in town.stdout_lines():
        json.loads(line)


def test_sd_notify_ready_reloading_stopping_watchdog(town):
    path = str(town.root / "notify.sock")
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
        town.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, wait=False)
        msg = recv_until(lambda m: "READY=1" in m)
        assert "STATUS=" in msg
        recv_until(lambda m: m == "WATCHDOG=1")
        town.wait_ready()
        assert town.cli("reload").returncode == 0
        msg = recv_until(lambda m: "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in msg           # same datagram
        usec = int(msg.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
        recv_until(lambda m: "READY=1" in m)
        town.proc.send_signal(signal.SIGTERM)
        recv_until(lambda m: "STOPPING=1" in m)
        assert town.proc.wait(20) == 0
    finally:
        s.close()
    # the redis child must not talk to systemd
    assert not any("redis" in m.lower() for m in got)


def test_daemonize_pidfile_and_second_instance_refused(town):
    pidfile = town.root / "run" / "tinytownd.pid"
    r = run_cli("run", "-c", str(town.cfg_path), "--daemonize", "--pidfile", str(pidfile))
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text().strip())
    try:
        assert pid_alive(pid)
        st = town.wait_ready()
        assert st["pid"] == pid
        # second instance: refused, whichever way it is started
        r = run_cli("run", "-c", str(town.cfg_path), "--daemonize", "--pidfile", str(pidfile))
        assert r.returncode == 73 and str(pid) in r.stderr
        r = run_cli("run", "-c", str(town.cfg_path))
        assert r.returncode == 73 and "another tinytownd" in r.stderr
        assert town.status()["pid"] == pid       # the first one is untouched
        logs = town.root / "logs" / "tinytownd.log"
        assert logs.exists() and json.loads(logs.read_text().splitlines()[0])["event"]
        r = town.cli("stop", "--timeout", "20")
        assert r.returncode == 0, r.stderr
        assert not pid_alive(pid)
        assert not pidfile.exists()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        town.redis_pids.update(town.redis_pids)


def test_kill9_daemon_then_restart_keeps_data(town):
    town.start()
    old_redis = town.status()["redis"]["pid"]
    c = town.redis()
    c.set("survivor", "yes")
    c.rpush("queue", *range(100))
    town.proc.kill()
    town.proc.wait(10)
    # the child dies with its parent (PR_SET_PDEATHSIG=SIGTERM: redis saves and exits)
    wait_for(lambda: not pid_alive(old_redis), 15, what="orphan redis exit")
    town.start()
    st = town.status()
    assert st["redis"]["pid"] != old_redis and st["redis"]["ready"]
    c = town.redis()
    assert c.get("survivor") == "yes" and c.llen("queue") == 100
    assert town.stop() == 0


def test_signals_term_and_usr1_reopen(town):
    town.write(logging={"file": "logs/d.log"})
    town.start()
    log = town.root / "logs" / "d.log"
    assert log.exists()
    log.rename(town.root / "logs" / "d.log.1")
    town.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), 15,
             what="reopen")
    town.proc.send_signal(signal.SIGTERM)
    assert town.proc.wait(20) == 0
    assert json.loads(log.read_text().splitlines()[-1])["event"] == "stopped"
    assert town.stdout_path.read_text() == ""      # logging.file: nothing on stdout
