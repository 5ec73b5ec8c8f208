"""Where a round's usage and failure class are written: the task's daemon meta, the agent's info
and the mission's daemon meta sum the usage (keys.task_meta, agent_info, mission_meta); the task
keeps its failed rounds' classes. An exit-0 round passes `usage_arg` to lua/round_ok.lua (no
extra round trip); other ends queue `queue_usage` on their pipeline.
"""
from __future__ import annotations

import json

from tinytownd.store.wire import json_ts

from .usage import USAGE_COUNTS, USAGE_LABELS

FAILURES_KEPT = 20
FAILURE_ERROR_MAX = 300


def _split(u: dict) -> dict:
    return {"n": {k: u[k] for k in USAGE_COUNTS if u.get(k)},
            "f": {"cost_usd": u["cost_usd"]} if u.get("cost_usd") else {},
            "s": {k: u[k] for k in USAGE_LABELS if u.get(k)}}


def usage_arg(u: dict) -> str:
    """ARGV[17] of round_ok.lua: '' when the round reported no usage."""
    return json.dumps(_split(u), separators=(",", ":")) if u else ""


def queue_usage(pipe, scripts, keys, *, aid: str, meta_key: str | None, mission: str | None,
                u: dict) -> None:
    """Queue the usage of a round that did not end with exit 0 (lua/add_usage.lua)."""
    if not u:
        return
    targets = [keys.agent_info(aid)]
    if meta_key:
        targets.append(meta_key)
    if mission:
        targets.append(keys.mission_meta(mission))
    scripts.add_usage(keys=targets, args=[usage_arg(u), 2 if meta_key else 0,
                                          keys.daemon_prefix], client=pipe)


def failures_after(meta: dict, cls: str, error: str) -> str:
    """The task meta's `failures` field (JSON list, newest FAILURES_KEPT) with this round's."""
    try:
        old = json.loads(meta.get("failures") or "[]")
        if not isinstance(old, list):
            old = []
    except ValueError:
        old = []
    old.append({"class": cls, "error": error[:FAILURE_ERROR_MAX], "at": json_ts()})
    return json.dumps(old[-FAILURES_KEPT:], ensure_ascii=False, separators=(",", ":"))


def queue_failure(pipe, meta_key: str | None, meta: dict, cls: str, error: str) -> None:
    """Record a failed round's class on the task's meta (`last_class`, `failures`)."""
    if not meta_key:
        return
    failures = failures_after(meta, cls, error)
    meta["failures"] = failures
    pipe.hset(meta_key, mapping={"last_class": cls, "failures": failures})
