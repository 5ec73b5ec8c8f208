"""Reload: validate → diff → apply, and the old config keeps running if the new one is invalid.

Keys a reload cannot apply (restart-only) keep their running values in the config that takes
effect; the reply lists what was applied, what needs a restart, and notes from the components.
SIGHUP and the control socket's `reload` both come here.
"""
from __future__ import annotations

import dataclasses
import time

from tinytownd import config, logs, metrics
from tinytownd.config import ConfigError, redact_url

from . import sdnotify
from .redis_server import RedisApplyError


def describe(ch: config.Change) -> str:
    """Change.describe(), with passwords inside URLs redacted too."""
    if ch.key == "redis.url":
        ch = dataclasses.replace(ch, old=redact_url(ch.old) if ch.old else ch.old,
                                 new=redact_url(ch.new) if ch.new else ch.new)
    return ch.describe()


def refuse_drastic(old: config.Config, new: config.Config) -> None:
    """A reload must not empty the town by accident (an editor that truncated the file, every
    entry commented out): refuse an empty file, and a file that would remove every agent unless
    it says so with an explicit `agents: []`. Raises ConfigError."""
    running = len(old.expanded_agents())
    if new.source_empty:
        raise ConfigError(new.path, [("", "the file is empty (only whitespace or comments): a "
                                          "reload would reset every setting to its default"
                                          + (f" and remove all {running} agents" if running else "")
                                          + "; to mean it, write `{}` (or `agents: []`)")])
    if running and not new.expanded_agents() and not new.agents_listed:
        raise ConfigError(new.path, [("agents", f"this reload would remove all {running} agents "
                                                "(no `agents:` list in the file); to mean it, "
                                                "write `agents: []`")])


def reload(d) -> dict:
    """Reload daemon `d`'s config file (the caller holds its reload lock)."""
    t0 = time.monotonic()
    sdnotify.reloading()
    old = d.cfg
    try:
        new = config.load(old.path)
        refuse_drastic(old, new)
    except ConfigError as e:
        sdnotify.ready(f"reload failed: {e.problems[0][1] if e.problems else e}")
        d.log.error("reload refused: invalid config", error=str(e))
        d.last_reload = {"ok": False, "at": time.time(), "error": str(e)}
        metrics.RELOADS.inc("invalid_config")
        return {"ok": False, "code": "invalid_config", "error": str(e)}
    changes = config.diff(old, new)
    effective = new
    restart_required, applied, notes, errors = [], [], [], []
    for ch in changes:
        if not ch.live:
            restart_required.append(describe(ch))
            effective = config.keep_old(effective, old, ch.key)
        else:
            applied.append(describe(ch))
    try:
        if effective.logging.level != old.logging.level:
            logs.set_level(effective.logging.level)
        if d.log_file(effective) != d.log_file(old):
            logs.open_sink(d.log_file(effective))
    except (OSError, ValueError) as e:
        errors.append(f"logging: {e}")
    live_redis = [c for c in changes if c.live and c.key.startswith("redis.")]
    if d.redis is not None:
        try:   # its CONFIG SET lines are in `changes`; keep only "applies later" notes
            notes += [n for n in d.redis.apply(old, effective) if "applies when" in n]
        except RedisApplyError as e:
            errors.append(str(e))
    elif live_redis:
        notes.append("redis.* settings are not applied to an external Redis: "
                     + ", ".join(c.key for c in live_redis))
    d.cfg = effective
    if d.ctx is not None:
        d.ctx.config = effective
    for comp in d.components:
        try:
            notes += list(comp.reload(old, effective) or [])
        except Exception as e:
            d.log.error("component reload failed", component=comp.name, exc_info=True)
            errors.append(f"{comp.name}: {type(e).__name__}: {e}")
    ms = round((time.monotonic() - t0) * 1000, 2)
    if errors:
        d.log.error("reload partly failed", errors=errors, changes=applied)
        sdnotify.ready("reload partly failed")
        d.last_reload = {"ok": False, "at": time.time(), "error": "; ".join(errors)}
        metrics.RELOADS.inc("apply_failed")
        return {"ok": False, "code": "apply_failed", "error": "; ".join(errors),
                "changes": applied, "restart_required": restart_required, "notes": notes}
    d.reloads += 1
    metrics.RELOADS.inc("ok")
    d.last_reload = {"ok": True, "at": time.time(), "changes": len(applied)}
    d.log.info("reloaded", changes=applied, restart_required=restart_required, notes=notes,
               reload_ms=ms)
    sdnotify.ready(f"running town {d.cfg.town.name} (reloads: {d.reloads})")
    return {"ok": True, "changes": applied, "restart_required": restart_required,
            "notes": notes, "reload_ms": ms, "config_path": d.cfg.path}
