"""Control notes: the operator's directives to a mission, applied first in every tick.

A note's first word decides (tt's directives):
  resume | retry [force]   a blocked mission runs again; on a running one, items that ran out of
                           attempts are released for another try and watches are checked now
                           (`force`: blocking watches are marked done instead)
  redirect [ITEM] to AGENT [reason]   (also reassign / reroute / rebind) the item goes to AGENT;
                           its other live tasks are cancelled
  pause | hold             a running mission is blocked: no watch polling, no new tasks
anything else is logged as an operator note. Every note is marked processed, and a note that
fails is logged, never aborting the tick. Pure.
"""
from __future__ import annotations

from tinytownd.store.agents import match_agents
from tinytownd.store.wire import AGENT_TERMINAL

from .mission import MissionControlMessage
from .tick import Tick
from .work import WorkItem

REDIRECT_VERBS = ("redirect", "reassign", "reroute", "rebind")


def apply_controls(t: Tick):
    """Apply the pending notes in the order they were written."""
    for c in sorted(t.inp.controls, key=lambda c: (c.created_at, c.id)):
        if c.processed_at is not None:
            continue
        try:
            apply_note(t, c)
        except Exception as e:
            t.log(f"Dispatcher could not process note from {c.sender}: {e}")
        c.processed_at = t.now
        t.out.controls_processed.append(c)


def apply_note(t: Tick, c: MissionControlMessage):
    m = t.mission
    body = c.body.strip()
    lower = body.lower()
    words = body.split()
    if lower.startswith("resume") or lower.startswith("retry"):
        force = len(words) > 1 and words[1].lower() == "force"
        if m.state == "blocked":
            n = force_watches(t) if force else 0
            m.start(t.now)
            t.out.progress = True
            extra = f" (force-completed {n} blocking watch(es))" if n else ""
            t.log(f"Dispatcher received resume directive from {c.sender}: {body}{extra}")
        elif m.state == "running":
            n = retry_exhausted(t)
            w = force_watches(t) if force else watches_due_now(t)
            t.out.progress = bool(n or w)
            t.log(f"Dispatcher received resume directive from {c.sender} while mission "
                  f"was running: retried {n} blocked item(s), "
                  f"{'force-completed' if force else 're-checking'} {w} watch(es): {body}")
        else:
            t.log(f"Dispatcher ignored resume directive from {c.sender} while mission "
                  f"was {m.state.capitalize()}: {body}")
        return
    if words and words[0].lower() in REDIRECT_VERBS:
        parsed = parse_redirect(words[1:])
        if parsed is not None:
            redirect(t, c, body, *parsed)
            return
    if lower.startswith("pause") or lower.startswith("hold"):
        if m.state == "running":
            m.block(f"Paused by {c.sender}: {body}", t.now)
            t.out.progress = True
            t.log(f"Dispatcher received pause directive from {c.sender}: {body}")
        else:
            t.log(f"Dispatcher ignored pause directive from {c.sender} while mission was "
                  f"{m.state.capitalize()}: {body}")
        return
    t.log(f"Dispatcher received operator note from {c.sender}: {body}")


def parse_redirect(rest: list[str]) -> tuple[str | None, str, str] | None:
    """(item ref or None, agent ref, reason) from the words after the verb."""
    if len(rest) >= 2 and rest[0].lower() == "to":
        return None, rest[1], " ".join(rest[2:])
    if len(rest) >= 3 and rest[1].lower() == "to":
        return rest[0], rest[2], " ".join(rest[3:])
    return None


def resolve_item(t: Tick, ref: str | None) -> WorkItem | None:
    """An open item by id, file id or unique id prefix; without a ref, the only open item."""
    open_items = [it for it in t.items.values() if it.status != "done"]
    if ref is None:
        return open_items[0] if len(open_items) == 1 else None
    r = ref.strip().lower()
    if r in t.items:
        return t.items[r]
    fid = [it for it in open_items if (t.meta(f"file_id:{it.id}") or "").lower() == r]
    if len(fid) == 1:
        return fid[0]
    hits = [it for it in open_items if it.id.lower().startswith(r)]
    return hits[0] if len(hits) == 1 else None


def resolve_agent_ref(agents: list[dict], ref: str) -> dict | None:
    """An agent by id, name, display name, display label or 4-character short id (any case),
    as tt resolves it; None for the supervisor and for no match. LookupError when ambiguous."""
    r = ref.strip().lower()
    if r in ("supervisor", "conductor"):
        return None
    exact = [a for a in agents if a.get("id", "").lower() == r]
    if exact:
        return exact[0]
    hits = match_agents(agents, r)
    if len(hits) > 1:
        raise LookupError(f"agent reference '{ref}' is ambiguous "
                          f"({', '.join(a.get('name', '?') for a in hits)})")
    return hits[0] if hits else None


def redirect(t: Tick, c: MissionControlMessage, body: str, item_ref: str | None,
             agent_ref: str, reason: str):
    it = resolve_item(t, item_ref)
    if it is None:
        t.log(f"Dispatcher ignored redirect directive from {c.sender}: could not "
              f"resolve work item in '{body}'")
        return
    try:
        agent = resolve_agent_ref(list(t.agents.values()), agent_ref)
    except LookupError as e:
        t.log(f"Dispatcher ignored redirect directive from {c.sender}: {e} in '{body}'")
        return
    if agent is None:
        t.log(f"Dispatcher ignored redirect directive from {c.sender}: unknown agent "
              f"'{agent_ref}' in '{body}'")
        return
    if agent.get("state") in AGENT_TERMINAL:
        t.log(f"Dispatcher ignored redirect directive from {c.sender}: agent "
              f"'{agent.get('name')}' is {agent.get('state')} in '{body}'")
        return
    cancelled, keep = 0, None
    why = f"Superseded by dispatcher redirect to {agent.get('name')}" + \
          (f" ({reason})" if reason else "")
    for task in list(t.live.get(it.id, [])):
        if task.get("assigned_to") == agent["id"] and keep is None:
            keep = task
            continue
        t.cancel(it.id, task, why)
        cancelled += 1
    if keep is None:
        fix = bool(it.artifact_refs)
        intro = "[Mission Fix Redirect]" if fix else "[Mission Redirect]"
        prev = t.agents.get(it.assigned_to or "", {}).get("name") or "nobody"
        text = t.header(intro, it) + f"Previously assigned to: {prev}\n"
        if reason:
            text += f"Operator correction: {reason}\n"
        if it.artifact_refs:
            text += "Latest artifacts:\n" + "".join(f"- {a}\n" for a in it.artifact_refs[-5:])
        desc = t.description(it)
        if desc:
            text += f"\n{desc}\n"
        t.create_task("fix" if fix else "work", it, agent, text)
    it.assign(agent["id"], t.now)
    t.set_meta(f"implementer:{it.id}", agent["id"])
    t.item_changed(it)
    if t.mission.state == "blocked":
        t.mission.start(t.now)
    t.out.progress = True
    extra = f"; cancelled {cancelled} superseded mission task(s)" if cancelled else ""
    t.log(f"Redirected work item '{it.title}' to '{agent.get('name')}'{extra}"
          + (f" ({reason})" if reason else ""))
    t.log(f"Dispatcher redirected work item {it.id} to {agent_ref} from {c.sender}")


def force_watches(t: Tick) -> int:
    """Mark every open watch done; returns how many."""
    n = 0
    for w in t.all_watches():
        if w.status != "done":
            w.complete()
            t.watch_changed(w)
            n += 1
    return n


def watches_due_now(t: Tick) -> int:
    """Make every open watch due at once; returns how many were not due yet."""
    n = 0
    for w in t.all_watches():
        if w.status != "done" and w.next_due_at > t.now:
            w.next_due_at = t.now
            t.watch_changed(w)
            n += 1
    return n


def retry_exhausted(t: Tick) -> int:
    """Release the items blocked after their last attempt, with a fresh attempt count."""
    n = 0
    for it in t.items.values():
        if t.meta(f"exhausted:{it.id}") and it.status == "blocked":
            t.del_meta(f"exhausted:{it.id}")
            t.set_meta(f"attempts:{it.id}", 0)
            it.assigned_to = None
            it.mark_ready(t.now)
            t.item_changed(it)
            t.log(f"Work item '{it.title}' released for retry by operator")
            n += 1
    return n
