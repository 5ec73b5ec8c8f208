"""The owned redis-server: a supervised foreground child of the daemon.

* Spawned with gevent.subprocess (`--daemonize no --supervised no`, NOTIFY_SOCKET and the other
  systemd variables removed from its environment, its own session so a terminal's Ctrl-C reaches
  only the daemon). Every setting is passed explicitly, through stdin (`redis-server -`) so the
  password never appears on a command line: dir, dbfilename, appenddirname/appendfilename, save,
  appendonly, appendfsync, maxmemory(-policy), logfile and pidfile all under `cfg.redis_data_dir`;
  a unix socket (perm 700) with `port 0` by default, TCP bind/port when `redis.socket` is null,
  requirepass, TLS.
* The child gets PR_SET_PDEATHSIG=SIGTERM: if the daemon is killed, redis saves and exits. A child
  that survived anyway (or is still saving) is found again at the next start through its pid file or
  the socket (INFO process_id), verified to be *ours* (/proc/<pid>/comm is redis-server and its cwd
  is our data dir), and shut down with SHUTDOWN SAVE before a new one starts. A server that is not
  ours is never signalled: a live foreign server on our socket/port is a clear error instead.
* Ready = PING answered (not LOADING). On failure the error carries the tail of redis.log.
* `supervise()` restarts a child that died, with backoff; `apply()` does CONFIG SET for the settings
  that change live; `stop()` is SHUTDOWN SAVE (or NOSAVE without persistence), then the files go.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import socket
import time
from pathlib import Path

import gevent
from gevent import subprocess

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tinytownd.config import Config, is_loopback
from tinytownd.daemon.pidfile import pid_alive, read_pid
from tinytownd.daemon.redis_clients import MIN_VERSION, _tls_kwargs

STRIP_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
             "LISTEN_FDNAMES", "REDIS_URL", "TINYTOWN_REDIS_PASSWORD", "TINYTOWND_READY_FD")
LIVE_KEYS = ("maxmemory", "maxmemory_policy", "save", "appendonly", "appendfsync")
PR_SET_PDEATHSIG = 1


class RedisStartError(Exception):
    """The owned redis-server cannot be started; the message says why (with the log tail)."""


class RedisApplyError(Exception):
    """CONFIG SET of a reloaded setting was refused."""


def _quote(value: object) -> str:
    s = str(value)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def server_version(binary: str) -> str:
    """`redis-server --version` → "7.0.15". Raises RedisStartError if missing or unparsable."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                             env={k: v for k, v in os.environ.items() if k not in STRIP_ENV})
    except FileNotFoundError:
        raise RedisStartError(f"redis-server binary {binary!r} not found (redis.server)") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RedisStartError(f"cannot run {binary} --version: {e}") from None
    m = re.search(r"v=(\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    if not m:
        raise RedisStartError(f"cannot parse the version from {binary} --version: "
                              f"{out.stdout.strip()[:200]!r}")
    return ".".join(g for g in m.groups() if g is not None)


def _preexec_pdeathsig():
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:   # the parent died before prctl took effect
            os._exit(1)
    return preexec


class OwnedRedis:
    """The redis-server child of one daemon. Not thread-safe; gevent only."""

    def __init__(self, cfg: Config, log):
        self.cfg = cfg
        self.log = log.bind(component="redis")
        self.proc: subprocess.Popen | None = None
        self.version: str | None = None
        self.ready = False
        self.restarts = 0
        self.started_at: float | None = None     # time.monotonic() when last ready
        self.ready_s: float | None = None        # spawn → PING answered, last start
        self._stopping = False
        self._client: redis.Redis | None = None
        self._preexec = _preexec_pdeathsig()

    # ------------------------------------------------------------------ paths and URLs
    @property
    def data_dir(self) -> Path:
        return self.cfg.redis_data_dir

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def socket_path(self) -> Path | None:
        return self.cfg.redis_socket_path

    @property
    def url(self) -> str:
        """The URL clients use (may hold the password: never log it)."""
        return self.cfg.redis_url()

    @property
    def redacted_url(self) -> str:
        return self.cfg.redis_url(redacted=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def persistent(self) -> bool:
        return bool(self.cfg.redis.save) or self.cfg.redis.appendonly

    def _probe(self, **kw) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=1.0,
                                    socket_timeout=kw.pop("socket_timeout", 5.0),
                                    retry=Retry(NoBackoff(), 0), max_connections=4,
                                    **_tls_kwargs(self.cfg, self.url), **kw)

    # ------------------------------------------------------------------ configuration
    def config_text(self) -> str:
        """The redis.conf fed to `redis-server -` on stdin."""
        r, d = self.cfg.redis, self.data_dir
        lines = [
            ("daemonize", "no"), ("supervised", "no"),
            ("dir", d), ("dbfilename", "dump.rdb"),
            ("appenddirname", "appendonlydir"), ("appendfilename", "appendonly.aof"),
            ("save", r.save), ("appendonly", _yes(r.appendonly)), ("appendfsync", r.appendfsync),
            ("maxmemory", r.maxmemory), ("maxmemory-policy", r.maxmemory_policy),
            ("logfile", self.logfile), ("pidfile", self.pidfile), ("loglevel", "notice"),
            ("bind", r.bind), ("protected-mode", "yes"),
        ]
        if self.socket_path is not None:
            lines += [("unixsocket", self.socket_path), ("unixsocketperm", "700")]
        if r.tls.enabled:
            t = r.tls
            lines += [("port", 0), ("tls-port", r.port),
                      ("tls-cert-file", self.cfg.resolve(t.cert)),
                      ("tls-key-file", self.cfg.resolve(t.key)),
                      ("tls-auth-clients", _yes(t.auth_clients))]
            if t.ca_cert:
                lines.append(("tls-ca-cert-file", self.cfg.resolve(t.ca_cert)))
            else:
                lines.append(("tls-ca-cert-dir", "/etc/ssl/certs"))
        else:
            lines.append(("port", r.port))
        if r.password:
            lines += [("requirepass", r.password), ("masterauth", r.password)]
        return "".join(f"{k} {_quote(v)}\n" for k, v in lines)

    def _check_config(self) -> None:
        r = self.cfg.redis
        tcp = self.socket_path is None or r.port != 0 or r.tls.enabled
        if tcp and not is_loopback(r.bind) and not r.password:
            raise RedisStartError(f"redis.bind {r.bind!r} is not a loopback address and there is "
                                  "no redis.password: refusing to expose an open Redis")
        version = server_version(r.server)
        major, minor = (int(x) for x in version.split(".")[:2])
        if (major, minor) < MIN_VERSION:
            raise RedisStartError(f"{r.server} is version {version}; tinytownd needs redis-server "
                                  f">= {MIN_VERSION[0]}.{MIN_VERSION[1]}")
        self.version = version

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Spawn the child and wait until it answers PING. Raises RedisStartError."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self._stopping = False
        self._check_config()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cleanup_leftover()
        env = {k: v for k, v in os.environ.items() if k not in STRIP_ENV}
        t0 = time.monotonic()
        log_fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen(
                [self.cfg.redis.server, "-"], stdin=subprocess.PIPE, stdout=log_fd,
                stderr=log_fd, env=env, cwd=str(self.data_dir), start_new_session=True,
                preexec_fn=self._preexec, close_fds=True)
        except OSError as e:
            raise RedisStartError(f"cannot start {self.cfg.redis.server}: {e}") from None
        finally:
            os.close(log_fd)
        try:
            self.proc.stdin.write(self.config_text().encode())
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.pidfile.write_text(f"{self.proc.pid}\n")
        except OSError:
            pass
        try:
            self._wait_ready(t0)
        except RedisStartError:
            self._kill_child()
            raise
        self.ready_s = time.monotonic() - t0
        self.started_at = time.monotonic()
        self.ready = True
        self.log.info("redis-server ready", pid=self.proc.pid, version=self.version,
                      url=self.redacted_url, ready_ms=round(self.ready_s * 1000, 1))

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.cfg.redis.start_timeout_s
        client = self._probe(socket_timeout=2.0)
        last = "no answer"
        delay = 0.001
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RedisStartError(f"redis-server exited with code {self.proc.returncode} "
                                          f"before it was ready\n{self.log_tail()}")
                if self.socket_path is None or self.socket_path.exists():
                    try:
                        if client.ping():
                            info = client.info("server")
                            self.version = str(info.get("redis_version", self.version))
                            if self._client is not None:
                                self._client.close()
                            self._client = self._probe()
                            return
                    except redis.BusyLoadingError:
                        last = "still loading the dataset"
                    except redis.AuthenticationError as e:
                        raise RedisStartError(f"redis-server refused our password: {e}") from None
                    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                        last = str(e)
                gevent.sleep(delay)
                delay = min(0.02, delay * 1.5)
        finally:
            client.close()
        raise RedisStartError(f"redis-server did not answer PING within "
                              f"{self.cfg.redis.start_timeout_s}s ({last})\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return "(no redis log)"
        return f"--- last lines of {self.logfile} ---\n" + "\n".join(text[-lines:])

    # ------------------------------------------------------------------ leftovers
    def _is_ours(self, pid: int) -> bool:
        """A redis-server whose working directory is our data dir (it chdir()s to `dir`)."""
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return False
        if not comm.startswith("redis-server") and \
                comm != os.path.basename(self.cfg.redis.server)[:15]:
            return False
        return os.path.realpath(cwd) == os.path.realpath(self.data_dir)

    def _cleanup_leftover(self) -> None:
        """Shut down a child a killed daemon left behind; clear stale pid/socket files."""
        mine = self.proc.pid if self.proc is not None else None
        pid = read_pid(self.pidfile)
        if pid and pid != mine and pid_alive(pid):
            if self._is_ours(pid):
                self._shutdown_leftover(pid)
            else:
                self.log.info("stale redis pid file: the pid is not our redis-server", pid=pid)
        if self.pidfile.exists() and not (pid and pid_alive(pid) and self._is_ours(pid)):
            self.pidfile.unlink(missing_ok=True)
        # Someone may still answer on our socket/port (e.g. the pid file was lost).
        sock = self.socket_path
        if sock is not None and not (sock.exists() or sock.is_symlink()):
            return
        if sock is not None and not self._connectable(sock):
            self.log.info("removing stale redis socket", socket=str(sock))
            sock.unlink(missing_ok=True)
            return
        if sock is None and not self._tcp_listening():
            return
        other = None
        c = self._probe(socket_timeout=2.0)
        try:
            other = int(c.info("server").get("process_id", 0)) or None
        except redis.RedisError:
            pass
        finally:
            c.close()
        if other and other != mine and self._is_ours(other):
            self._shutdown_leftover(other)
            if sock is not None:
                sock.unlink(missing_ok=True)
            return
        where = sock if sock is not None else f"{self.cfg.redis.bind}:{self.cfg.redis.port}"
        raise RedisStartError(f"another server (pid {other or 'unknown'}) answers on {where}; "
                              "it is not tinytownd's redis-server, so it is left alone. Stop it or "
                              "change redis.socket / redis.port")

    @staticmethod
    def _connectable(path: Path) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def _tcp_listening(self) -> bool:
        r = self.cfg.redis
        host = r.bind if r.bind not in ("0.0.0.0", "::", "*") else "127.0.0.1"
        try:
            with socket.create_connection((host, r.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _shutdown_leftover(self, pid: int) -> None:
        self.log.warning("found a redis-server left by a previous daemon; shutting it down "
                         "(SHUTDOWN SAVE) before starting a new one", pid=pid)
        c = self._probe(socket_timeout=60.0)
        try:
            c.shutdown(save=True)
        except redis.RedisError as e:
            self.log.info("SHUTDOWN not possible; sending SIGTERM", pid=pid, error=str(e))
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        finally:
            c.close()
        if not self._wait_gone(pid, 60.0):
            self.log.error("left-over redis-server ignores SHUTDOWN; killing it", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            self._wait_gone(pid, 10.0)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            gevent.sleep(0.01)
        return not pid_alive(pid)

    # ------------------------------------------------------------------ stop
    def stop(self, timeout: float = 60.0) -> None:
        """SHUTDOWN SAVE (NOSAVE without persistence); no orphan, no stale files."""
        self._stopping = True
        self.ready = False
        proc = self.proc
        if proc is not None and proc.poll() is None:
            c = self._probe(socket_timeout=timeout)
            try:
                c.shutdown(save=self.persistent, nosave=not self.persistent)
            except redis.RedisError as e:
                self.log.warning("SHUTDOWN failed; sending SIGTERM", error=str(e))
                self._signal(signal.SIGTERM)
            finally:
                c.close()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.log.error("redis-server did not exit; killing it", pid=proc.pid)
                self._kill_child()
            self.log.info("redis-server stopped", pid=proc.pid, returncode=proc.returncode)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._remove_files()

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass

    def _kill_child(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _remove_files(self) -> None:
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        if self.proc is None or read_pid(self.pidfile) in (self.proc.pid, None):
            self.pidfile.unlink(missing_ok=True)

    # ------------------------------------------------------------------ supervision
    def supervise(self, stopping, progress=lambda: None, *, check_interval: float = 1.0) -> None:
        """Run until `stopping` is set: restart a child that died (with backoff), PING it."""
        backoff = 0.1
        cap = self.cfg.redis.restart_backoff_max_s
        while not stopping.is_set() and not self._stopping:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                self.ready = False
                if proc is not None and not self._stopping:
                    self.log.error("redis-server exited; restarting it", pid=proc.pid,
                                   returncode=proc.returncode, backoff_s=backoff)
                    self.proc = None
                if stopping.wait(backoff) or self._stopping:
                    return
                backoff = min(cap, backoff * 2)
                try:
                    self.start()
                    self.restarts += 1
                    self.log.info("redis-server restarted", pid=self.pid, restarts=self.restarts)
                except RedisStartError as e:
                    self.log.error("redis-server restart failed", error=str(e))
                continue
            try:
                proc.wait(timeout=check_interval)
                continue
            except subprocess.TimeoutExpired:
                pass
            try:
                if self._client is not None and self._client.ping():
                    progress()
                    self.ready = True
            except redis.RedisError as e:
                self.log.warning("redis-server liveness PING failed", error=str(e))
            if self.started_at and time.monotonic() - self.started_at > 30:
                backoff = 0.1

    # ------------------------------------------------------------------ reload
    def apply(self, old_cfg: Config, new_cfg: Config) -> list[str]:
        """CONFIG SET the live settings that changed; returns one line per change."""
        a, b = old_cfg.redis, new_cfg.redis
        notes: list[str] = []
        pending = []
        for key in LIVE_KEYS:
            va, vb = getattr(a, key), getattr(b, key)
            if va != vb:
                value = _yes(vb) if isinstance(vb, bool) else str(vb)
                pending.append((key, key.replace("_", "-"), va, vb, value))
        if pending and (self._client is None or self.proc is None or self.proc.poll() is not None):
            # Being restarted by supervise(): the next child starts from self.cfg.
            self.cfg = new_cfg
            return [f"redis.{k}: {va!r} -> {vb!r} (applies when the restarting redis-server is "
                    "back)" for k, _, va, vb, _ in pending]
        for key, name, va, vb, value in pending:
            try:
                self._client.config_set(name, value)
            except redis.RedisError as e:
                raise RedisApplyError(f"CONFIG SET {name} {value!r} failed: {e}") from None
            notes.append(f"redis.{key}: {va!r} -> {vb!r} (CONFIG SET {name})")
        # A restart of the child uses the new values too; restart-only keys keep the old ones.
        self.cfg = new_cfg
        return notes

    def status(self) -> dict:
        out = {"mode": "owned", "pid": self.pid, "ready": bool(self.ready and self.pid),
               "version": self.version, "restarts": self.restarts,
               "data_dir": str(self.data_dir)}
        if self.socket_path is not None:
            out["socket"] = str(self.socket_path)
        else:
            out["url"] = self.redacted_url
        return out
