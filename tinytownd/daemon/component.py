"""The contract between the daemon and the parts it hosts (town runtime, missions).

The daemon builds one `Context`, then each `Component` in turn. A component hands the daemon its
long-running loops as named services; the daemon's supervisor runs each in a greenlet, restarts a
crashed one with backoff and reports its state. Reload, drain and status are fanned out to every
component. Components never install signal handlers and never exit the process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tinytownd.config import Config
from tinytownd.store.keys import Keys


@dataclass
class Context:
    config: Config                      # the live config; replaced on a successful reload
    keys: Keys
    clients: Any                        # redis_conn.Clients (cmd + block pools)
    instance_id: str                    # this daemon process (uuid), the owner in leases
    stopping: Any                       # gevent.event.Event: set when the daemon starts to drain
    progress: Callable[[str], None] = lambda name: None   # loops call it; feeds the watchdog
    extra: dict = field(default_factory=dict)              # shared objects between components


class Component:
    """Base class: override what you need."""

    name = "component"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def services(self) -> dict[str, Callable[[], None]]:
        """Named loops to run under supervision. Each returns once ctx.stopping is set."""
        return {}

    def reload(self, old: Config, new: Config) -> list[str]:
        """Apply a validated new config (ctx.config is already `new`). Return notes for the user."""
        return []

    def drain(self, deadline: float) -> None:
        """Stop taking work, let running work finish until `deadline` (time.monotonic())."""

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        """Release leases and resources; called after drain, before Redis stops."""
