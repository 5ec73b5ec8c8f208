"""From submitted work to a done item: PR watches, the review gate and fix tasks.

When an item's work (or fix) task completes, its result is recorded as artifacts. PRs named in it
get the four PR watches; an item that needs review gets a review task; a reviewer's result
starting with a reject prefix asks for a fix task, anything else approves. A watch that triggers
creates a fix task (at most one open per item and watch), advances the pipeline or notifies the
reviewers. `finalize` completes a blocked item once its review and all its watches are done. Pure.
"""
from __future__ import annotations

from . import scoring
from .tick import Tick
from .watch import CommandWatch, WatchItem, pr_refs
from .work import WorkItem, task_binding

# the watches a submitted PR gets: (kind, action on trigger)
PR_WATCHES = (("pr_checks", "create_fix_task"), ("bugbot_comments", "create_fix_task"),
              ("review_comments", "create_fix_task"), ("mergeability", "advance_pipeline"))


def _has_open_watches(t: Tick, it: WorkItem) -> bool:
    return any(w.status != "done" for w in t.watches_of(it.id))


# ---------------------------------------------------------------------- watch results
def apply_watch_results(t: Tick):
    """Apply the outcomes of the due watches checked before the tick."""
    cfg = t.inp.cfg
    for wid, res in t.inp.watch_results.items():
        w = t.inp.watches.get(wid) or t.inp.cmd_watches.get(wid)
        if w is None or not w.is_due(t.now):
            continue
        it = t.items.get(w.work_item_id)
        t.watch_changed(w)
        if not res.ok:
            w.record_failure(t.now)
            if w.consecutive_failures == cfg.watch_max_failures and it is not None \
                    and it.status != "done":
                it.block(t.now)
                t.item_changed(it)
                t.log(f"Work item '{it.title}' blocked: Watch check failed: {res.error}")
            continue
        if isinstance(w, CommandWatch):
            w.last_exit = res.exit_code
            if res.triggered:
                w.last_check_at = t.now
                w.complete()
                t.out.progress = True
                t.log(f"Command watch {w.id[:4]} triggered for '{it.title if it else '?'}'"
                      f": {w.command}")
            else:
                w.record_check(t.now)
            continue
        if res.triggered and not (w.on_trigger == "advance_pipeline" and res.complete):
            trigger(t, w, it)
            t.out.progress = True
        if res.triggered and not res.complete:
            w.snooze(cfg.watch_snooze_s, t.now)
            w.last_check_at = t.now
            t.out.progress = True
        if res.complete:
            w.last_check_at = t.now
            w.complete()
            t.out.progress = True
        elif not res.triggered:
            w.record_check(t.now)


def trigger(t: Tick, w: WatchItem, it: WorkItem | None):
    if it is None:
        return
    if w.on_trigger == "create_fix_task":
        ensure_fix_task(t, it, f"Watch {w.kind} triggered on {w.target_ref}", watch=w)
    elif w.on_trigger == "advance_pipeline":
        if w.target_ref not in it.artifact_refs:
            it.record_artifacts([w.target_ref], t.now)
            t.item_changed(it)
    elif w.on_trigger == "notify_reviewer":
        for a in t.agents.values():
            if scoring.is_reviewer(a):
                t.out.messages.append((a["id"], "informational", {
                    "summary": f"[Mission Notification] Watch triggered for {it.id}: "
                               f"{w.kind} on {w.target_ref}"}))
    t.log(f"Watch {w.id} triggered action {w.on_trigger} for {w.target_ref}")


# ---------------------------------------------------------------------- finished tasks
def record_submission(t: Tick, it: WorkItem, arts: list[str]):
    """A work or fix task completed with `arts` (its task ref and result)."""
    refs = pr_refs(arts)
    it.record_artifacts(arts, t.now)
    it.clear_review_approval(t.now)
    if refs:
        it.block(t.now)
        ensure_pr_watches(t, it, refs)
        if t.needs_review(it):
            ensure_review_task(t, it)
            t.log(f"Work item '{it.title}' submitted {', '.join(refs)}; waiting for review")
        else:
            t.log(f"Work item '{it.title}' submitted {', '.join(refs)}; waiting on "
                  "external watches")
    elif t.needs_review(it):
        it.block(t.now)
        ensure_review_task(t, it)
        t.log(f"Work item '{it.title}' submitted; waiting for review")
    elif _has_open_watches(t, it):
        it.block(t.now)
        t.log(f"Work item '{it.title}' submitted; waiting on its watches")
    else:
        it.complete((), t.now)
        t.out.done.append(it.id)
        t.log(f"Work item '{it.title}' completed")


def approve(t: Tick, it: WorkItem, arts: list[str]):
    it.record_artifacts(arts, t.now)
    it.approve_review(t.now)
    it.block(t.now)
    t.log(f"Reviewer approved '{it.title}'")
    if _has_open_watches(t, it):
        return
    it.complete((), t.now)
    t.out.done.append(it.id)
    t.log(f"Work item '{it.title}' finalized after review/watch gates")


def request_changes(t: Tick, it: WorkItem, reason: str):
    it.block(t.now)
    it.clear_review_approval(t.now)
    ensure_fix_task(t, it, reason)
    t.log(f"Reviewer requested changes for '{it.title}': {reason}")


# ---------------------------------------------------------------------- gates
def ensure_pr_watches(t: Tick, it: WorkItem, refs: list[str]):
    """The PR watches of each ref: new ones, or existing ones re-armed (due now)."""
    existing = {(w.work_item_id, w.kind, w.target_ref): w for w in t.inp.watches.values()}
    for ref in refs:
        for kind, action in PR_WATCHES:
            w = existing.get((it.id, kind, ref))
            if w is not None:
                w.status, w.next_due_at, w.last_check_at = "active", t.now, None
                w.consecutive_failures, w.on_trigger = 0, action
                t.out.watches_changed.add(w.id)
                continue
            w = WatchItem(id=t.inp.new_id(), mission_id=t.mid, work_item_id=it.id,
                          kind=kind, target_ref=ref,
                          interval_secs=t.mission.policy.watch_interval_secs,
                          next_due_at=t.now, on_trigger=action)
            t.inp.watches[w.id] = w
            t.out.watches_changed.add(w.id)


def ensure_review_task(t: Tick, it: WorkItem) -> bool:
    """A review task for the item unless one is live; False when no reviewer is idle."""
    if any(task_binding(x.get("tags"))[2] == "review" for x in t.live.get(it.id, [])):
        return True
    reviewers = [a for a in t.idle_agents() if scoring.is_reviewer(a)]
    if not reviewers:
        t.out.waiting_for_agent = True
        return False
    a = min(reviewers, key=t.idle_key)
    latest = next((x for x in reversed(it.artifact_refs) if "github.com" in x or "#" in x),
                  "no PR ref provided")
    text = t.header("[Mission Review]", it) + (
        f"Latest PR/ref: {latest}\n\nReview the submission. Complete this task with a result "
        "starting with `approved: ...` or `rejected: <what to change>`.\n")
    nt = t.create_task("review", it, a, text)
    t.log(f"Assigned review task {nt.task_id} for '{it.title}' to reviewer '{a.get('name')}'")
    return True


def ensure_fix_task(t: Tick, it: WorkItem, reason: str, watch: WatchItem | None = None):
    """A fix task for the item (for `watch`, when given) unless one is open already; it goes
    to the item's implementer while that agent is alive, else to the best idle agent."""
    for x in t.live.get(it.id, []):
        if task_binding(x.get("tags"))[2] == "fix" and (
                watch is None or f"watch:{watch.id}" in (x.get("tags") or [])):
            return
    owner = None
    for cand in (t.meta(f"implementer:{it.id}"), it.assigned_to):
        if cand and t.alive(cand):
            owner = t.agents[cand]
            break
    if owner is None:
        owner = t.best_agent(it.kind, it.owner_role)
    if owner is None:
        t.out.waiting_for_agent = True
        t.log(f"No agent available for a fix task on '{it.title}'")
        return
    if watch is not None:
        text = t.header("[Mission Fix Required]", it) + (
            f"Watch type: {watch.kind}\nTarget: {watch.target_ref}\nReason: {reason}\n")
        extra = [f"watch:{watch.id}"]
    else:
        text = t.header("[Mission Fix]", it) + f"Reason: {reason}\n"
        extra = []
    nt = t.create_task("fix", it, owner, text, extra)
    t.log(f"Assigned fix task {nt.task_id} for '{it.title}' to '{owner.get('name')}'")


def finalize(t: Tick):
    """Complete the blocked items whose submission passed every gate. A review task that found
    no idle reviewer is asked for again on every tick."""
    for it in t.items.values():
        if it.status != "blocked":
            continue
        if not it.artifact_refs and not it.reviewer_approved:
            continue
        if t.needs_review(it) and not it.reviewer_approved:
            ensure_review_task(t, it)
            continue
        if _has_open_watches(t, it):
            continue
        it.complete((), t.now)
        t.item_changed(it)
        t.out.done.append(it.id)
        t.log(f"Work item '{it.title}' completed")
