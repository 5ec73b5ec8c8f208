"""Test helpers: a private redis-server, short temp dirs, running the CLI as a subprocess."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]   # the repository


@contextlib.contextmanager
def short_tmpdir(prefix: str = "tt-"):
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class RedisServer:
    """redis-server as a foreground child on a unix socket (no TCP unless port given)."""

    def __init__(self, dir: Path, *, port: int = 0, password: str | None = None,
                 extra: list[str] | None = None):
        self.dir = Path(dir)
        self.port = port
        self.password = password
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def sock(self) -> str:
        return str(self.dir / "redis.sock")

    @property
    def url(self) -> str:
        q = f"?password={self.password}" if self.password else ""
        return f"unix://{self.sock}{q}"

    def start(self) -> "RedisServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.sock, "--unixsocketperm", "700", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen(args + self.extra, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.AuthenticationError, OSError):
                time.sleep(0.01)
        raise RuntimeError("redis-server did not come up: " +
                           (self.dir / "redis.log").read_text()[-2000:])

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.sock, password=self.password,
                           decode_responses=True, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child (if it runs) and wait; SIGKILL when it does not end in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(pred, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll `pred` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)   # gevent.sleep under the suite's monkey-patching
    raise AssertionError(f"timed out waiting for {what}")


def tinytownd_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "tinytownd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tinytownd"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(tinytownd_cmd() + list(args), env=full_env, capture_output=True,
                          text=True, timeout=timeout, input=input)
