"""In-process harness for the town runtime (its tests and bench_dispatch): builds a Context the
way the daemon does, runs TownRuntime's services in greenlets, and stops everything it started."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import gevent
import gevent.event
import yaml

from tinytownd import config
from tinytownd.daemon.component import Context
from tinytownd.store.keys import Keys
from tinytownd.daemon.redis_clients import make_clients
from tinytownd.runtime.town_runtime import TownRuntime
from tinytownd.store.town import Town
from tinytownd.store.wire import new_id
from tests.support.helpers import wait_for  # noqa: F401,E402  (re-exported for the runtime tests)


def write_config(root: Path, redis_url: str, *, agents, clis, town="t", runtime=None,
                 adopt=False) -> Path:
    data = {"town": {"name": town, "root": str(root)}, "redis": {"url": redis_url},
            "runtime": {"heartbeat_interval_s": 0.2, "lease_ttl_s": 4.0, "stale_after_s": 4.0,
                        "sweep_interval_s": 0.3, "retry_backoff_s": 0.05,
                        "block_timeout_s": 0.2, **(runtime or {})},
            "agent_clis": clis, "agents": agents, "adopt": adopt}
    path = root / "tinytownd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def exclusive_cli(locks: Path, violations: Path, sleep_s: float) -> str:
    """An agent command that proves no agent runs twice at once: it holds a lock directory per
    agent while it runs, and a second copy beside it appends to `violations`."""
    return (f"mkdir {locks}/$TINYTOWN_AGENT_ID 2>/dev/null || echo x >> {violations}; "
            f"sleep {sleep_s}; rmdir {locks}/$TINYTOWN_AGENT_ID")


class Harness:
    def __init__(self, cfg_path: Path):
        self.cfg = config.load(str(cfg_path), env={}, check_files=False)
        self.keys = Keys(self.cfg.town.name)
        self.clients = make_clients(self.cfg, blocking_connections=self.cfg.blocking_connections)
        self.ctx = Context(config=self.cfg, keys=self.keys, clients=self.clients,
                           instance_id=new_id(), stopping=gevent.event.Event())
        self.rt = TownRuntime(self.ctx)
        self.town: Town = self.rt.town
        self.greenlets: list = []

    def start(self) -> "Harness":
        self.greenlets = [gevent.spawn(fn) for fn in self.rt.services().values()]
        return self

    def stop(self, drain_s: float = 5.0) -> None:
        self.ctx.stopping.set()
        self.rt.drain(time.monotonic() + drain_s)
        gevent.joinall(self.greenlets, timeout=5)
        gevent.killall(self.greenlets, timeout=2)
        self.rt.close()
        self.clients.close()

    def crash(self) -> None:
        """Like kill -9 of the daemon: greenlets die without releasing or recording anything."""
        for w in self.rt.workers.values():
            w.lost = True
        self.ctx.stopping.set()
        gevent.killall(self.greenlets, timeout=2)
        self.rt.pool.kill(timeout=2)
        self.rt.lifeline.close()        # the pipe closes as when the process dies
        self.clients.close()

    def aid(self, name: str) -> str:
        return self.town.resolve_agent(name)




@contextlib.contextmanager
def harnesses(redis_url: str, tmpdir: Path):
    """make(agents, clis, root_name=None, start=True, **config) → a Harness with its town root
    under `tmpdir`; every one made is stopped at the end (the runtime and workspace fixtures)."""
    made: list[Harness] = []

    def make(agents, clis, *, root_name=None, start=True, **kw):
        root = tmpdir / (root_name or f"town{len(made)}")
        root.mkdir(exist_ok=True)
        h = Harness(write_config(root, redis_url, agents=agents, clis=clis, **kw))
        made.append(h)
        return h.start() if start else h

    try:
        yield make
    finally:
        for h in made:
            try:
                h.stop()
            except Exception:
                pass
