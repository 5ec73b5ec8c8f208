"""Private redis-servers for the benchmarks: unix socket in a temp dir, no TCP, always stopped.

    with RedisLab(appendfsync="everysec") as lab:   # or None = no AOF
        lab.url, lab.sock, lab.client()
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import redis


class RedisLab:
    def __init__(self, *, appendfsync: str | None = None, name: str = "lab"):
        self.appendfsync = appendfsync
        self.name = name
        self.dir = None
        self.proc = None

    @property
    def sock(self) -> str:
        return os.path.join(self.dir, "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.sock}?db=0"

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.sock, socket_timeout=None,
                           max_connections=10000, **kw)

    def start(self) -> "RedisLab":
        self.dir = tempfile.mkdtemp(prefix=f"ttb-{self.name}-", dir="/tmp")
        args = ["redis-server", "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
                "--dir", self.dir, "--save", "", "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log"), "--maxclients", "10000"]
        if self.appendfsync:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, OSError):
                time.sleep(0.005)
        self.stop()
        raise RuntimeError("redis-server did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.client().shutdown(nosave=True)
            except Exception:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
