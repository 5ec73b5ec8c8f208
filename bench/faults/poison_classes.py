"""The poison-* classes: one driver (poison.Poisoner) over the kinds of each area.
"""
from __future__ import annotations



from .classes import fault
from .harness import Trial


from .poison import Kind, Poisoner
from .poison_queues import (AGENT_KINDS, BACKLOG_KINDS, DELAYED_KINDS, NOTIFY_KINDS,
                            QUEUE_KINDS, TASK_KINDS)
from .poison_missions import MISSION_KINDS, WRITE_KINDS


# ============================================================================= classes
def _run_kinds(trial: Trial, name: str, kinds: list[Kind]) -> None:
    import copy
    kinds = [copy.copy(k) for k in kinds]
    p = Poisoner(trial, name)
    p.kinds = kinds
    try:
        for k in kinds:
            if trial.budget.left() < 30:
                trial.result.note(f"out of time before kind {k.name}")
                break
            p.run(k)
    finally:
        p.finish()


def _poison(name, kinds, doc, **kw):
    @fault(name, doc, trials_full=1, budget_quick=kw.get("bq", 120), budget_full=kw.get("bf", 600))
    def fn(trial: Trial) -> None:
        _run_kinds(trial, name, kinds)
    return fn


_poison("poison-queues", QUEUE_KINDS, "hostile messages in inbox / urgent / in-flight lists, "
        "and those lists of the wrong Redis type")
_poison("poison-backlog", BACKLOG_KINDS, "hostile backlog entries (garbage ids, ghosts, a wrong-"
        "typed task key, 150 ghosts before a real task), the backlog of the wrong type")
_poison("poison-tasks", TASK_KINDS, "task hashes and daemon task meta with hostile fields or "
        "of the wrong Redis type, each with its task_assign queued")
_poison("poison-agents", AGENT_KINDS, "agent hashes, daemon agent info, agent_names (then a "
        "reload), lease keys and the stop flag: hostile values and wrong types")
_poison("poison-delayed", DELAYED_KINDS, "the retry zset: hostile envelopes (garbage, WRONGTYPE "
        "targets, keys outside the town), the zset of the wrong type")
_poison("poison-notify", NOTIFY_KINDS, "hostile PUBLISHes on the notify channel")
_MREC = ("mission-record", "mission-work", "mission-watch", "mission-control")
_poison("poison-missions", [k for k in MISSION_KINDS if k.name.startswith(_MREC)],
        "tt's mission records: the mission JSON, :work, :watch, :control (hostile values, wrong "
        "types)", bq=120, bf=700)
_poison("poison-mission-meta", [k for k in MISSION_KINDS if not k.name.startswith(_MREC)],
        "mission bookkeeping: daemon meta, bound tasks, cmdwatch, dispatch_lock, mission:active, "
        "mission:engines (hostile values, wrong types)", bq=120, bf=700)
_poison("poison-write-targets", WRITE_KINDS, "keys the daemon writes (events streams, activity, "
        "dead-letter list, daemon registry) of the wrong Redis type")
