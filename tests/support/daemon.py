"""One wrapper for a daemon process in the tests: `tinytownd run -c <root>/tinytownd.yaml`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import redis
import yaml

from tinytownd.daemon import control

from . import leftovers
from .helpers import run_cli, tinytownd_cmd, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class DaemonProcess:
    """A config file in a temp dir plus the `tinytownd run` process started from it."""

    def __init__(self, root: Path, *, config: Path | None = None, **sections):
        """`config`: an existing config file to run (else one is written from `sections`)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg_path = Path(config) if config else self.root / "tinytownd.yaml"
        self.proc: subprocess.Popen | None = None
        self.redis_pids: set[int] = set()
        self.data = {}
        if config:
            self.data = yaml.safe_load(self.cfg_path.read_text()) or {}
        else:
            self.write(**sections)

    def write(self, **sections) -> None:
        base = {"town": {"name": "t", "root": str(self.root)}}
        self.data = _merge(base, sections)
        self.cfg_path.write_text(yaml.safe_dump(self.data))

    def write_raw(self, text: str) -> None:
        self.cfg_path.write_text(text)

    @property
    def control_sock(self) -> Path:
        return self.root / (self.data.get("control", {}).get("socket") or "tinytownd.sock")

    @property
    def redis_sock(self) -> Path:
        return self.root / "redis.sock"

    @property
    def stdout_path(self) -> Path:
        return self.root / "stdout.log"

    def cli(self, *args, env=None) -> subprocess.CompletedProcess:
        return run_cli(*args, "-c", str(self.cfg_path), env=env)

    def start(self, *extra, env=None, wait=True) -> "DaemonProcess":
        """Start the daemon (the test's REDIS_URL / TINYTOWND_CONFIG never leak into it)."""
        full_env = {**{k: v for k, v in os.environ.items()
                       if k not in ("REDIS_URL", "TINYTOWND_CONFIG")}, **(env or {})}
        self.proc = subprocess.Popen(
            tinytownd_cmd() + ["run", "-c", str(self.cfg_path), *extra],
            stdout=open(self.stdout_path, "ab"), stderr=open(self.root / "stderr.log", "ab"),
            env=full_env, stdin=subprocess.DEVNULL)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                # a start that never got ready leaves nothing behind, even when the caller had no
                # handle on this object yet (`d = DaemonProcess(...).start()` raised)
                self.cleanup()
                raise
        return self

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
        """A graceful stop (control `stop`, else SIGTERM); the exit code."""
        assert self.proc is not None
        try:
            self.request("stop", timeout=5.0)
        except (control.NotRunning, control.ControlError, OSError):
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def terminate(self, timeout=30.0) -> None:
        """SIGTERM (if running) and wait; SIGKILL when it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines() if self.stdout_path.exists() else []

    def kill(self) -> None:
        """kill -9 of the daemon (its redis child and agent CLIs may live on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.kill()
        leftovers.kill_under(self.root, extra_pids=self.redis_pids)
