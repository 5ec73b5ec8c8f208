"""One mission tick, pure: `run_tick(TickInput) -> TickOutput` (no Redis, no clock, no ids
unless injected).

The steps, in tt's order:
  1. control notes (controls.py);
  while the mission runs:
  2. results of the due watches, checked outside by watch_checks.py (submissions.py);
  3. reconcile each item with its bound tasks: a finished task is a submission, a review or a
     failure (retried up to max_attempts, then the item is blocked); a task whose assignee is
     gone is cancelled and the item released; a live task someone else created is adopted;
  4. finalize items whose gates passed (submissions.py), promote items whose dependencies are
     done, assign ready items within max_parallel_items;
  5. mission bookkeeping: completion, blocked_reason, next_wake_at;
  always:
  6. dispatcher bookkeeping: last tick and progress, and a help query to the conductor when the
     mission is stuck (repeated with backoff, or at once when the reason changes).
A blocked (paused, stopped) or finished mission gets no watch polling and no new tasks; its
finished tasks stay in the bound-task index and are reconciled once it runs again.

Deterministic: ready items in (topological depth, created_at, id) order, agents by (score desc,
longest idle, name, id).
"""
from __future__ import annotations

from datetime import timedelta

from .budget import over_budget
from .controls import apply_controls
from .mission import HELP_MARKER
from .submissions import (apply_watch_results, approve, finalize, record_submission,
                          request_changes)
from .tick import Tick, TickInput, TickOutput
from .work import WorkItem, task_binding

# which live task speaks for an item: work over fix over review, running over assigned
KIND_RANK = {"work": 3, "fix": 2, "review": 1}
STATE_RANK = {"running": 2, "assigned": 1}
BRANCH_REF = "branch:"   # an artifact ref naming the git branch a work task produced


def run_tick(inp: TickInput) -> TickOutput:
    t = Tick(inp)
    apply_controls(t)
    if t.mission.state == "running":
        apply_watch_results(t)
        reconcile(t)
        finalize(t)
        promote(t)
        spent = over_budget(t.meta) if any(it.status != "done" for it in t.items.values()) \
            else None
        if spent:          # the cost budget: running tasks finish, nothing new is assigned
            t.mission.block(spent, t.now)
            t.out.progress = True
            t.log(f"Mission blocked: {spent}")
        else:
            assign(t)
            mission_bookkeeping(t)
    dispatcher_bookkeeping(t)
    return t.out


def topo_depth(items: dict[str, WorkItem]) -> dict[str, int]:
    """Each item's depth in the dependency graph (0 = no dependencies in the mission)."""
    depth: dict[str, int] = {}
    for root in items:
        if root in depth:
            continue
        stack = [(root, False)]
        on_path = set()
        while stack:
            wid, expanded = stack.pop()
            if wid in depth:
                continue
            it = items.get(wid)
            deps = [d for d in (it.depends_on if it else ()) if d in items]
            if expanded:
                on_path.discard(wid)
                depth[wid] = 1 + max((depth.get(d, 0) for d in deps), default=-1)
                continue
            on_path.add(wid)
            stack.append((wid, True))
            for d in deps:
                if d not in depth and d not in on_path:
                    stack.append((d, False))
    return depth


# ---------------------------------------------------------------------- 3. reconcile
def reconcile(t: Tick):
    for wid, it in t.items.items():
        changed = False
        for task in sorted(t.terminal.get(wid, []),
                           key=lambda x: (str(x.get("completed_at") or x.get("updated_at")),
                                          x["id"])):
            changed |= task_finished(t, it, task)
        if it.status == "done":
            for task in list(t.live.get(wid, [])):
                if task_binding(task.get("tags"))[2] in ("work", "fix") and \
                        task.get("assigned_to") and not t.alive(task.get("assigned_to")):
                    t.cancel(wid, task, "Cancelled: work item already done")
            if changed:
                t.item_changed(it)
                t.out.reconciled.append(wid)
            continue
        for task in list(t.live.get(wid, [])):
            aid = task.get("assigned_to")
            if aid and not t.alive(aid):
                who = "no longer exists" if aid not in t.agents else "is in a terminal state"
                t.cancel(wid, task, f"Cancelled: assignee {who}")
                t.log(f"Cancelled mission task {task['id']} of '{it.title}': assignee {who}")
                if task_binding(task.get("tags"))[2] in ("work", "fix") and \
                        it.status in ("assigned", "running"):
                    it.assigned_to = None
                    it.mark_ready(t.now)
                    changed = True
        live = t.live.get(wid, [])
        if live:
            changed |= _follow_live_task(t, it, live)
        elif it.assigned_to and not t.alive(it.assigned_to):
            if it.status in ("assigned", "running"):
                t.log(f"Released stale assignee {it.assigned_to} from work item '{it.title}'")
                it.assigned_to = None
                it.mark_ready(t.now)
                changed = True
            elif it.status == "blocked":
                t.log(f"Cleared stale blocked assignee {it.assigned_to} from work item "
                      f"'{it.title}'")
                it.assigned_to = None
                changed = True
        if changed:
            t.item_changed(it)
            t.out.reconciled.append(wid)


def _follow_live_task(t: Tick, it: WorkItem, live: list[dict]) -> bool:
    """The item takes the owner and state of the live task that speaks for it. A review task
    never makes the reviewer the item's owner."""
    changed = False
    auth = max(live, key=lambda x: (KIND_RANK.get(task_binding(x.get("tags"))[2], 0),
                                    STATE_RANK.get(x.get("state"), 0),
                                    str(x.get("updated_at") or "")))
    kind = task_binding(auth.get("tags"))[2]
    owner = auth.get("assigned_to")
    if owner and owner != it.assigned_to and kind in ("work", "fix"):
        it.assigned_to = owner
        t.set_meta(f"implementer:{it.id}", owner)
        t.log(f"Rebound work item '{it.title}' to live mission task owner {owner}")
        changed = True
    st = auth.get("state")
    if kind in ("work", "fix") and st in ("assigned", "running") and it.status != st:
        it.status = st
        it.updated_at = t.now
        t.log(f"Updated work item '{it.title}' to {st.capitalize()} from live mission task")
        changed = True
    return changed


def task_finished(t: Tick, it: WorkItem, task: dict) -> bool:
    """Process one finished bound task, once. Returns whether the item changed."""
    t.out.tasks_processed.add(task["id"])
    if task.get("assigned_to"):
        t.freed.add(task["assigned_to"])
    kind = task_binding(task.get("tags"))[2]
    state = task.get("state")
    result = (task.get("result") or "").strip()
    if state == "completed":
        if it.status == "done" or f"task:{task['id']}" in it.artifact_refs:
            return False
        arts = [f"task:{task['id']}"] + ([f"{BRANCH_REF}{task['branch']}"]
                                         if task.get("branch") else []) + \
            ([result] if result else [])
        if kind == "review":
            low = result.lower()
            if any(low.startswith(p) for p in t.inp.cfg.review_reject_prefixes):
                request_changes(t, it, result)
            else:
                approve(t, it, arts)
        else:
            record_submission(t, it, arts)
        return True
    # failed / cancelled
    if kind == "review":
        t.log(f"Review task {task['id']} for '{it.title}' ended {state}: {result}")
        return False
    if t.live.get(it.id) or it.status not in ("assigned", "running"):
        return False
    if task.get("assigned_to") and it.assigned_to and task["assigned_to"] != it.assigned_to:
        return False
    if state == "cancelled":
        it.assigned_to = None
        it.mark_ready(t.now)
        t.log(f"Work item '{it.title}' released: task {task['id']} was cancelled ({result})")
        return True
    n = int(t.meta(f"attempts:{it.id}") or 0) + 1
    t.set_meta(f"attempts:{it.id}", n)
    t.set_meta(f"last_error:{it.id}", result[:500])
    limit = t.max_attempts()
    it.assigned_to = None
    if n < limit:
        it.mark_ready(t.now)
        t.log(f"Work item '{it.title}' task {task['id']} failed (attempt {n}/{limit}); "
              f"retrying: {result}")
    else:
        it.block(t.now)
        t.set_meta(f"exhausted:{it.id}", n)
        t.log(f"Work item '{it.title}' blocked after {n} failed attempt(s): {result}")
    return True


# ---------------------------------------------------------------------- 4. promote, assign
def promote(t: Tick):
    status = {wid: it.status for wid, it in t.items.items()}
    for it in t.items.values():
        if it.status == "pending" and all(status.get(d) == "done" for d in it.depends_on):
            it.mark_ready(t.now)
            t.item_changed(it)
            t.out.promoted.append(it.id)
            t.log(f"Work item '{it.title}' promoted to ready")


def assign(t: Tick):
    running = sum(1 for it in t.items.values() if it.status in ("assigned", "running"))
    slots = max(0, t.mission.policy.max_parallel_items - running)
    ready = [it for it in t.items.values() if it.status == "ready"]
    if not slots or not ready:
        return
    depth = t.inp.depth
    if depth is None or any(it.id not in depth for it in ready):
        depth = t.inp.depth = topo_depth(t.items)
    ready.sort(key=lambda it: (depth.get(it.id, 0), it.created_at, it.id))
    for it in ready:
        if slots <= 0:
            break
        if not t.idle_agents():
            t.out.waiting_for_agent = True
            break
        a = t.best_agent(it.kind, it.owner_role)
        if a is None:
            t.out.waiting_for_agent = True
            continue
        text = t.header("[Mission Work Item]", it) + f"Source: {it.source_ref or 'unknown'}\n"
        desc = t.description(it)
        if desc:
            text += f"\n{desc}\n"
        text += dependency_branches(t, it)
        text += ("\nWhen you finish, complete this task with a short result. If you opened a "
                 "pull request, include its URL (or owner/repo#PR) so watches can take over.\n")
        nt = t.create_task("work", it, a, text)
        it.assign(a["id"], t.now)
        t.set_meta(f"implementer:{it.id}", a["id"])
        t.item_changed(it)
        t.out.assigned.append(it.id)
        slots -= 1
        t.log(f"Assigned '{it.title}' to agent '{a.get('name')}' as task {nt.task_id}")


def dependency_branches(t: Tick, it: WorkItem) -> str:
    """The prompt's lines naming the branches the item's dependencies produced (worktree mode:
    their results record `branch:<name>`), or ""."""
    lines = []
    for dep in it.depends_on:
        d = t.items.get(dep)
        for ref in (d.artifact_refs if d else ()):
            if ref.startswith(BRANCH_REF):
                lines.append(f"- {d.title} ({dep}): {ref[len(BRANCH_REF):]}")
    if not lines:
        return ""
    return ("\nBranches of its dependencies (git; build on them, e.g. merge them into your "
            "branch):\n" + "\n".join(dict.fromkeys(lines)) + "\n")


# ---------------------------------------------------------------------- 5. mission bookkeeping
def mission_bookkeeping(t: Tick):
    m = t.mission
    items = list(t.items.values())
    if not items:
        m.fail("Mission has no work items", t.now)
        t.out.completed = True
        t.log("Mission failed - it has no work items")
        return
    all_done = all(it.status == "done" for it in items)
    has_ready = any(it.status == "ready" for it in items)
    has_running = any(it.status in ("assigned", "running") for it in items)
    active = [w for w in t.all_watches() if w.status in ("active", "snoozed")]
    next_due = min((w.next_due_at for w in active), default=None)
    if all_done and not active:
        m.complete(t.now)
        t.out.completed = True
        t.log("Mission completed - all work items and watches done")
        return
    if all_done:
        m.blocked_reason = f"Waiting on {len(active)} active watch(es)"
        m.next_wake_at = next_due
    elif not has_ready and not has_running:
        m.next_wake_at = next_due or t.now + timedelta(seconds=t.inp.cfg.tick_interval_s)
        m.blocked_reason = "Waiting on dependency, review, or external watch"
    else:
        m.blocked_reason = None
        m.next_wake_at = next_due if active else None


# ---------------------------------------------------------------------- 6. dispatcher bookkeeping
def _progress_made(t: Tick) -> bool:
    o = t.out
    return bool(o.progress or o.completed or o.reconciled or o.promoted or o.assigned or o.done)


def help_reason(t: Tick) -> str | None:
    """Why the conductor should help, or None. An operator-paused or stopped mission is left
    alone."""
    m = t.mission
    if m.is_terminal:
        return None
    if m.state == "blocked" and (m.blocked_reason or "").startswith(("Paused by", "Stopped by")):
        return None
    exhausted = [t.items[k[10:]] for k in set(t.inp.meta) | set(t.out.meta_set)
                 if k.startswith("exhausted:") and k[10:] in t.items]
    for it in sorted(exhausted, key=lambda x: (x.created_at, x.id)):
        n = t.meta(f"exhausted:{it.id}")
        if n and it.status == "blocked":
            err = t.meta(f"last_error:{it.id}") or ""
            return (f"Mission {t.mid} work item '{it.title}' ({it.id}) failed {n} "
                    f"time(s) and is blocked: {err}")
    since = m.dispatcher_last_progress_at or m.created_at
    if (t.now - since).total_seconds() < t.inp.cfg.stall_threshold_s:
        return None
    ready = sum(1 for it in t.items.values() if it.status == "ready")
    if ready and not t.idle_agents():
        return f"Mission {t.mid} has {ready} ready work item(s) but no idle agents are available"
    if m.blocked_reason:
        if any(w.status in ("active", "snoozed") for w in t.all_watches()):
            return None
        return f"Mission {t.mid} is still blocked: {m.blocked_reason}"
    return None


def dispatcher_bookkeeping(t: Tick):
    m, cfg = t.mission, t.inp.cfg
    m.record_dispatch_tick(t.now)
    if _progress_made(t):
        m.record_dispatch_progress(t.now)
    reason = help_reason(t)
    if reason is None:
        return
    changed = m.dispatcher_last_help_request_reason != reason
    last = m.dispatcher_last_help_request_at
    wait = cfg.help_base_s * min(2 ** min(m.dispatcher_help_request_attempts, 30),
                                 max(cfg.help_cap, 1))
    if last is None or changed or (t.now - last).total_seconds() >= wait:
        t.out.help_question = (
            f"{HELP_MARKER.format(mid=t.mid)}\n\n{reason}\n\n"
            f"Hint: tinytownd mission note {t.mid} \"resume ...\" (retry blocked items), "
            f"\"pause ...\", or \"redirect <item> to <agent>\"; "
            f"tt mission note {t.mid} \"...\" works too.")
        t.log(f"Dispatcher asked conductor for help: {reason}")
        m.record_help_request(reason, changed, t.now)
