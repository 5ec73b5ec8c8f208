"""`tinytownd status --town`: every daemon attached to the town, from any host.

Read from the daemon registry in Redis (store/keys.py `daemon:<instance>`: one hash per running
daemon, refreshed by its heartbeat with a TTL, so a daemon that died drops out by itself). Needs
only the town's Redis (redis.url or redis.sentinel), not a local daemon.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from .common import CommandError, open_redis

MAX_DAEMONS = 1000      # registry entries read (a town of more daemons is listed truncated)


def _age_s(stamp: str | None, now: float) -> float | None:
    try:
        t = datetime.strptime(stamp or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return round(max(0.0, now - t.timestamp()), 1)


def entry(instance: str, h: dict, now: float) -> dict:
    """One registry hash → the row shown (bad fields shown as None, never a crash)."""
    try:
        agents = json.loads(h.get("agents") or "[]")
        if not isinstance(agents, list):
            agents = None
    except ValueError:
        agents = None
    try:
        pid = int(h.get("pid", ""))
    except ValueError:
        pid = None
    return {"instance": instance, "host": h.get("host"), "pid": pid,
            "agents": [str(a) for a in agents] if agents is not None else None,
            "heartbeat": h.get("heartbeat"), "heartbeat_age_s": _age_s(h.get("heartbeat"), now),
            "started_at": h.get("started_at"), "version": h.get("version"),
            "primary": h.get("primary")}


def daemons(r, keys) -> list[dict]:
    import redis
    prefix = keys.daemon("")
    names = []
    try:
        for k in r.scan_iter(match=keys.daemon_pattern(), count=1000):
            names.append(k.decode() if isinstance(k, bytes) else k)
            if len(names) >= MAX_DAEMONS:
                break
        p = r.pipeline(transaction=False)
        for k in names:
            p.hgetall(k)
        rows = p.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        from tinytownd import exitcodes
        raise CommandError(exitcodes.UNAVAILABLE, f"Redis unreachable: {e}")
    now = time.time()
    out = []
    for k, h in zip(names, rows):
        if not isinstance(h, dict) or not h:
            continue        # expired between SCAN and HGETALL, or not a hash
        h = {(a.decode() if isinstance(a, bytes) else a):
             (b.decode(errors="replace") if isinstance(b, bytes) else b) for a, b in h.items()}
        out.append(entry(k[len(prefix):], h, now))
    return sorted(out, key=lambda e: (str(e["host"]), e["pid"] or 0))


def render(town: str, rows: list[dict]) -> str:
    lines = [f"town {town}: {len(rows)} daemon(s) attached"]
    for e in rows:
        age = e["heartbeat_age_s"]
        agents = e["agents"]
        lines.append(f"  {e['host']} pid {e['pid']}  heartbeat {e['heartbeat']}"
                     + (f" ({age:.1f}s ago)" if age is not None else "")
                     + f"  agents ({len(agents) if agents is not None else '?'}): "
                     + (", ".join(agents) if agents else "-"))
    return "\n".join(lines)


def cmd_town_status(args) -> int:
    from tinytownd import exitcodes
    _cfg, r, keys = open_redis(args, env_fallback=True)
    rows = daemons(r, keys)
    if args.json:
        print(json.dumps({"town": keys.town, "daemons": rows}))
    else:
        print(render(keys.town, rows))
    return exitcodes.OK
