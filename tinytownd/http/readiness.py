"""/readyz: ready only when Redis answers, every service runs and the mission dispatcher is not
stalled (townhall calls a stalled dispatcher ready; we do not). Pure: the caller gathers facts.
"""
from __future__ import annotations

DISPATCH_SERVICE = "missions.dispatch"


def checks(*, redis_probe: dict, services: dict[str, dict], stall_after_s: float,
           state: str) -> dict[str, dict]:
    """Each check → {"ok": bool, ...why}. `services`: Supervisor.details(); `state`: the daemon's
    (starting, running, stopping)."""
    out: dict[str, dict] = {}
    out["daemon"] = {"ok": state == "running", "state": state}
    if redis_probe.get("reachable"):
        out["redis"] = {"ok": True, "ping_ms": redis_probe.get("ping_ms")}
    else:
        out["redis"] = {"ok": False, "error": redis_probe.get("error") or "not reachable"}
    down = {n: s["state"] for n, s in services.items() if s.get("state") != "running"}
    out["services"] = {"ok": not down, **({"not_running": down} if down else {})}
    disp = services.get(DISPATCH_SERVICE)
    if disp is None:
        out["mission_dispatcher"] = {"ok": True, "enabled": False}
    else:
        age = disp.get("progress_age_s")
        stalled = age is not None and age > stall_after_s
        out["mission_dispatcher"] = {"ok": disp.get("state") == "running" and not stalled,
                                     "state": disp.get("state"), "progress_age_s": age,
                                     **({"stalled_after_s": stall_after_s} if stalled else {})}
    return out


def verdict(results: dict[str, dict]) -> tuple[bool, list[str]]:
    failing = [name for name, r in results.items() if not r["ok"]]
    return not failing, failing
