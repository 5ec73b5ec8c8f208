"""The daemon process: owns Redis (or checks an external one), hosts the components, answers the
control socket, talks to systemd, and turns signals into an orderly lifecycle.

    d = Daemon(cfg)      # nothing happens yet
    d.start()            # control socket, Redis, clients, components, services; READY=1
    code = d.run()       # blocks until stopped (signal, control `stop`, request_stop())

Signals only queue a name (gunicorn's SIG_QUEUE); the main greenlet handles them:
SIGTERM/SIGINT → graceful drain (daemon.drain_timeout_s); a second one or SIGQUIT → immediate;
SIGHUP → reload (the same `reload()` the control socket calls); SIGUSR1 → reopen the log file.
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import os
import resource
import signal
import socket
import time
import uuid
from typing import Any

import gevent
import gevent.lock
import gevent.queue
from gevent.event import Event

from tinytownd import __version__, exitcodes, logs
from tinytownd.config import Config, redact_url
from tinytownd.store.keys import Keys
from tinytownd.store.refusals import transient

from . import control_commands, redis_ha, sdnotify
from .component import Component, Context
from .control import ControlServer, SocketInUse
from .failover import PrimaryWatch

REDIS_BACKOFF_MAX_S = 10.0   # the longest wait of a loop retrying Redis (watchdog excuse)
from .pidfile import PidFile
from .redis_clients import RedisUnavailable, check_external, make_clients
from .redis_server import OwnedRedis, RedisStartError
from .reload import reload as reload_config
from .supervisor import Supervisor

COMPONENTS = ["tinytownd.runtime.town_runtime:TownRuntime", "tinytownd.missions.engine:MissionEngine",
              "tinytownd.http.server:HttpListener"]

class StartError(Exception):
    """The daemon cannot start. `exit_code` is the sysexits code for the CLI."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code




def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


class Daemon:
    def __init__(self, cfg: Config, *, install_signals: bool = True,
                 log_file_default: str | None = None, pidfile: str | PidFile | None = None):
        self.cfg = cfg
        self.install_signals = install_signals
        self.log_file_default = log_file_default
        self.pidfile_path = pidfile
        self.instance_id = uuid.uuid4().hex
        self.stopping = Event()          # components' stop flag (ctx.stopping)
        self.stopped = Event()           # run() finished its shutdown
        self._immediate = Event()
        self.stop_requested = False
        self._queue: gevent.queue.Queue = gevent.queue.Queue()
        self._reload_lock = gevent.lock.Semaphore()
        self.started = False
        self.started_at: float | None = None      # time.time()
        self._t0 = time.monotonic()
        self.reloads = 0
        self.last_reload: dict | None = None
        self.redis: OwnedRedis | None = None
        self.redis_version: str | None = None
        self.primary: tuple[str, int] | None = None     # with redis.sentinel: found at start
        self.watch: PrimaryWatch | None = None
        self.clients = None
        self.ctx: Context | None = None
        self.components: list[Component] = []
        self.control: ControlServer | None = None
        self.pidfile: PidFile | None = None
        # Loggers bind their processors when created: configure the JSON sink first.
        logs.configure(cfg.logging.level, self.log_file(cfg))
        self.log = logs.get_logger("tinytownd.daemon", town=cfg.town.name)
        self.supervisor = Supervisor(self.log.bind(logger="tinytownd.supervisor"), self.stopping)
        self._redis_stop = Event()
        self._watchdog: gevent.Greenlet | None = None

    # ------------------------------------------------------------------ start
    def log_file(self, cfg: Config) -> str | None:
        p = cfg.log_file_path
        return str(p) if p is not None else self.log_file_default

    def start(self) -> None:
        """Everything up, then READY=1. Raises StartError (with an exit code) on failure, after
        undoing what was started (control socket, redis child, pidfile)."""
        try:
            self._start()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        self.stopping.set()
        self._redis_stop.set()
        try:
            self.supervisor.kill(timeout=2.0)
            for comp in self.components:
                self._safe(comp.close)
            if self.control is not None:
                self.control.close()
            if self.clients is not None:
                self.clients.close()
            if self.redis is not None:
                self.redis.stop()
        finally:
            if self.pidfile is not None:
                self.pidfile.release()
            self.stopped.set()

    def _start(self) -> None:
        cfg = self.cfg
        # A fatal signal (the watchdog's SIGABRT, a segfault in a C extension) leaves a traceback
        # of every thread on stderr (the journal under systemd).
        if not faulthandler.is_enabled():
            faulthandler.enable(all_threads=True)
        from gevent import monkey
        if not monkey.is_module_patched("socket"):
            self.log.warning("gevent has not monkey-patched socket: blocking I/O will stall "
                             "every greenlet (patch_all() must run first)")
        soft, hard = raise_fd_limit()
        self.log.info("starting", pid=os.getpid(), version=__version__, config=cfg.path,
                      root=str(cfg.root), instance=self.instance_id, fd_limit=soft)
        if isinstance(self.pidfile_path, PidFile):   # acquired by daemonize.detach()
            self.pidfile = self.pidfile_path
        elif self.pidfile_path:
            try:
                self.pidfile = PidFile(self.pidfile_path).acquire()
            except Exception as e:
                raise StartError(str(e), exitcodes.CANTCREAT) from None
        # The control socket first: a live one means another daemon runs this town, and we must
        # not touch its redis-server.
        self.control = ControlServer(cfg.control_socket_path, control_commands.handlers(self),
                                     self.log.bind(logger="tinytownd.control"),
                                     docs=control_commands.DOCS)
        try:
            self.control.start()
        except SocketInUse as e:
            self.control = None
            raise StartError(str(e), exitcodes.CANTCREAT) from None
        except OSError as e:
            self.control = None
            raise StartError(f"cannot bind the control socket {cfg.control_socket_path}: {e}",
                             exitcodes.CANTCREAT) from None
        if self.install_signals:
            self._install_signals()
        self._start_redis()
        self.clients = make_clients(cfg, blocking_connections=cfg.blocking_connections,
                                    url=self.redis.url if self.redis else self._primary_url())
        self.ctx = Context(config=cfg, keys=Keys(cfg.town.name), clients=self.clients,
                           instance_id=self.instance_id, stopping=self.stopping,
                           progress=self.supervisor.progress)
        self.ctx.extra["daemon"] = self
        # the primary changing (failover, restart): leases re-validated (daemon/failover.py)
        self.watch = PrimaryWatch(lambda: self.cfg, self.clients,
                                  self.log.bind(logger="tinytownd.failover"), self.stopping,
                                  lambda: self.supervisor.progress("redis.watch"),
                                  primary=self.primary)
        self.ctx.extra["watch"] = self.watch
        self.supervisor.add("redis.watch", self.watch.run)
        if self.redis is not None:
            self.ctx.extra["owned_redis"] = self.redis
            self.supervisor.add("redis", lambda: self.redis.supervise(
                self._redis_stop, lambda: self.supervisor.progress("redis"),
                check_interval=min(1.0, self.cfg.daemon.watchdog_stall_s / 3)))
        self.supervisor.add("daemon.heartbeat", self._heartbeat_loop)
        self._load_components()
        self.supervisor.start()
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog = gevent.spawn(self._watchdog_loop, interval)
        self.started = True
        self.started_at = time.time()
        self.log.info("ready", startup_ms=round((time.monotonic() - self._t0) * 1000, 1),
                      services=sorted(self.supervisor.services))
        sdnotify.ready(f"running town {cfg.town.name}")

    def _start_redis(self) -> None:
        cfg = self.cfg
        if cfg.owned_redis:
            self.redis = OwnedRedis(cfg, self.log.bind(logger="tinytownd.redis"))
            try:
                self.redis.start()
            except RedisStartError as e:
                raise StartError(str(e), exitcodes.UNAVAILABLE) from None
            self.redis_version = self.redis.version
            return
        if cfg.sentinel is not None:
            try:
                self.redis_version, self.primary = redis_ha.check(cfg)
            except RedisUnavailable as e:
                raise StartError(str(e), exitcodes.UNAVAILABLE) from None
            self.log.info("redis primary found through Sentinel", master=cfg.sentinel.master,
                          primary=f"{self.primary[0]}:{self.primary[1]}",
                          version=self.redis_version)
            return
        try:
            self.redis_version = check_external(cfg)
        except ValueError as e:
            raise StartError(str(e), exitcodes.CONFIG) from None
        except RedisUnavailable as e:
            raise StartError(str(e), exitcodes.UNAVAILABLE) from None
        self.log.info("external redis ok", url=redact_url(cfg.redis.url), version=self.redis_version)

    def _primary_url(self) -> str | None:
        return redis_ha.primary_url(self.cfg, self.primary) if self.primary else None

    def _load_components(self) -> None:
        specs = COMPONENTS
        if os.environ.get("TINYTOWND_COMPONENTS") is not None:   # debugging / benchmarks
            specs = [c for c in os.environ["TINYTOWND_COMPONENTS"].split(",") if c.strip()]
        for spec in specs:
            module, _, cls_name = spec.partition(":")
            mod = importlib.import_module(module)
            comp = getattr(mod, cls_name)(self.ctx)
            self.components.append(comp)
            for name, fn in comp.services().items():
                self.supervisor.add(name, fn)
            self.log.info("component loaded", component=getattr(comp, "name", spec))

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1):
            gevent.signal_handler(sig, self._queue.put, sig)

    # ------------------------------------------------------------------ services
    def _heartbeat_loop(self) -> None:
        """Advertise this daemon (keys.daemon) and feed the watchdog."""
        ttl = max(3, int(3 * self.cfg.runtime.lease_ttl_s))
        key = self.ctx.keys.daemon(self.instance_id)
        base = {"pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
                "config_path": self.cfg.path,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at
                                                                               or time.time()))}
        failing = False
        try:
            while not self.stopping.is_set():
                try:
                    pipe = self.clients.cmd.pipeline()
                    pipe.hset(key, mapping={**base, **self._registry_fields(),
                                            "heartbeat": time.strftime(
                                                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                    pipe.expire(key, ttl)
                    pipe.execute()
                    self.supervisor.progress("daemon.heartbeat")
                    failing = False
                except Exception as e:  # Redis restarting: try again next round
                    if not failing:     # once per outage, not once per beat
                        self.log.warning("daemon heartbeat failed", error=str(e))
                    failing = True
                    if transient(e):    # Redis away is not a wedged daemon (watchdog)
                        self.supervisor.progress("daemon.heartbeat")
                # often enough for both the key's TTL and the watchdog's stall window
                self.stopping.wait(max(0.2, min(5.0, ttl / 9,
                                                self.cfg.daemon.watchdog_stall_s / 3)))
        finally:
            try:
                self.clients.cmd.delete(key)
            except Exception:
                pass

    def _registry_fields(self) -> dict:
        """What `status --town` shows of this daemon besides pid/host: the agents it runs now
        and the primary it writes to (the daemon registry, store/keys.py daemon:<instance>)."""
        rt = self.ctx.extra.get("runtime") if self.ctx is not None else None
        names = sorted(w.settings.name for w in rt.alive()) if rt is not None else []
        out = {"agents": json.dumps(names)}
        if self.watch is not None and self.watch.primary is not None:
            out["primary"] = f"{self.watch.primary[0]}:{self.watch.primary[1]}"
        return out

    def _waiting_for_redis(self, stall_s: float, stalled: list[str]) -> bool:
        """Services that made no progress are excused while Redis does not answer (and for a
        stall window plus the loops' longest backoff after it answers again), as long as the
        service that watches Redis itself keeps going: a Redis outage is not a wedged daemon."""
        w = self.watch
        if w is None or "redis.watch" in stalled:
            return False
        return w.redis_trouble_within(stall_s + REDIS_BACKOFF_MAX_S)

    def _watchdog_loop(self, interval: float) -> None:
        while not self.stopped.is_set():
            # While draining, loops wind down on purpose; the drain has its own deadline.
            stall_s = self.cfg.daemon.watchdog_stall_s
            stalled = [] if self.stopping.is_set() else self.supervisor.stalled(stall_s)
            if stalled and self._waiting_for_redis(stall_s, stalled):
                stalled = []        # they wait for Redis; restarting us would not help
            if stalled:
                self.log.warning("watchdog ping withheld: services made no progress",
                                 stalled=stalled)
            else:
                sdnotify.watchdog()
            gevent.sleep(interval)

    # ------------------------------------------------------------------ run / stop
    def request_stop(self, graceful: bool = True) -> None:
        self._queue.put("stop" if graceful else "stop-now")

    def run(self) -> int:
        """Block until stopped; returns the exit code (0)."""
        if not self.started:
            self.start()
        graceful = True
        while True:
            item = self._queue.get()
            if item in (signal.SIGTERM, signal.SIGINT, "stop"):
                self.log.info("stop requested", signal=_signame(item))
                break
            if item in (signal.SIGQUIT, "stop-now"):
                graceful = False
                self.log.info("immediate stop requested", signal=_signame(item))
                break
            if item == signal.SIGHUP:
                result = self.reload()
                if not result.get("ok"):
                    self.log.error("reload failed (SIGHUP)", error=result.get("error"))
            elif item == signal.SIGUSR1:
                self.reopen_logs()
        return self._shutdown(graceful)

    def _shutdown(self, graceful: bool) -> int:
        if self.stopped.is_set():      # already shut down (or start() failed and cleaned up)
            return 0
        self.stop_requested = True
        sdnotify.stopping("draining" if graceful else "stopping now")
        self.stopping.set()
        # A second SIGTERM/SIGINT (or SIGQUIT) during the drain makes it immediate.
        watcher = gevent.spawn(self._watch_second_signal)
        component_services = [n for n in self.supervisor.services if n != "redis"]
        if graceful:
            deadline = time.monotonic() + self.cfg.daemon.drain_timeout_s
            self.log.info("draining", timeout_s=self.cfg.daemon.drain_timeout_s)
            drains = [gevent.spawn(self._safe, c.drain, deadline) for c in self.components]
            drains.append(gevent.spawn(self.supervisor.join,
                                       max(0.0, deadline - time.monotonic()), component_services))
            waiter = gevent.spawn(gevent.joinall, drains)
            gevent.wait([waiter, self._immediate], count=1,
                        timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            if not waiter.dead:
                self.log.warning("drain incomplete; stopping now",
                                 immediate=self._immediate.is_set())
                gevent.killall(drains, block=True, timeout=2)
                waiter.kill()
        self.supervisor.kill(timeout=2.0, names=component_services)
        for comp in self.components:
            self._safe(comp.close)
        watcher.kill()
        if self.control is not None:
            self.control.close()
        self._redis_stop.set()
        self.supervisor.kill(timeout=2.0)
        if self.clients is not None:
            self.clients.close()
        if self.redis is not None:
            self.redis.stop()
        if self._watchdog is not None:
            self._watchdog.kill()
        if self.pidfile is not None:
            self.pidfile.release()
        self.stopped.set()
        self.log.info("stopped", uptime_s=round(time.time() - (self.started_at or time.time()), 3))
        return 0

    def _watch_second_signal(self) -> None:
        while True:
            item = self._queue.get()
            if item in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, "stop", "stop-now"):
                self.log.warning("second stop request: stopping now", signal=_signame(item))
                self._immediate.set()
                return
            if item == signal.SIGUSR1:
                self.reopen_logs()

    def _safe(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            self.log.error("component hook failed", hook=getattr(fn, "__qualname__", str(fn)),
                           exc_info=True)

    # ------------------------------------------------------------------ reload
    def reload(self) -> dict:
        """Validate → diff → apply (reload.py); one reload at a time."""
        with self._reload_lock:
            return reload_config(self)

    def reopen_logs(self) -> None:
        logs.reopen()
        self.log.info("log file reopened")

def _signame(item: Any) -> str:
    if isinstance(item, int):
        try:
            return signal.Signals(item).name
        except ValueError:
            return str(item)
    return str(item)
