"""The daemon's status document (`tinytownd status --json`, the control socket's `status`)."""
from __future__ import annotations

import os
import time

from tinytownd import __version__, logs
from tinytownd.config import redact_url


def redis_status(d) -> dict:
    cfg = d.cfg
    if d.redis is not None:
        return d.redis.status()
    if cfg.owned_redis:   # still starting
        return {"mode": "owned", "pid": None, "ready": False, "version": None}
    st = {"mode": "external", "url": redact_url(cfg.redis.url),
          "ready": d.redis_version is not None, "version": d.redis_version}
    if d.clients is not None:
        try:
            st["ready"] = bool(d.clients.cmd.ping())
        except Exception:
            st["ready"] = False
    return st


def status(d) -> dict:
    cfg = d.cfg
    out = {
        "pid": os.getpid(), "town": cfg.town.name, "root": str(cfg.root),
        "version": __version__, "instance": d.instance_id,
        "state": "stopping" if d.stop_requested else ("running" if d.started else "starting"),
        "uptime_s": round(time.time() - d.started_at, 3) if d.started_at else 0.0,
        "config_path": cfg.path, "reloads": d.reloads, "last_reload": d.last_reload,
        "log_level": logs.get_level(), "redis": redis_status(d),
        "services": d.supervisor.states(),
        "service_details": d.supervisor.details(),
        "components": {},
    }
    for comp in d.components:
        try:
            out["components"][comp.name] = comp.status()
        except Exception as e:
            out["components"][comp.name] = {"error": f"{type(e).__name__}: {e}"}
    return out
