"""`tinytownd mission …`: start / list / status / note / pause / resume / stop.

Exit codes: 0 ok; 65 unknown mission id or invalid mission file / issue ref (the message names the
item); 66 mission file not found; 69 Redis unreachable; 78 invalid config.
Only stdlib + tinytownd.cli at import time (the rest is imported inside the handlers).
"""
from __future__ import annotations

from tinytownd import cli

from . import common

H = "tinytownd.commands.mission_cmds:"


def register(sub) -> None:
    p = sub.add_parser("mission", help="missions: dependency graphs of work driven by the daemon")
    msub = p.add_subparsers(dest="mission_command", metavar="ACTION", parser_class=cli.Parser)
    msub.required = True

    s = msub.add_parser("start", help="start a mission from a YAML file or GitHub issues; "
                                      "prints its id")
    s.add_argument("file", nargs="?", help="mission file (YAML)")
    s.add_argument("--issue", "-i", action="append", default=[], metavar="REF",
                   help="GitHub issue: N, owner/repo#N or URL (repeatable)")
    s.add_argument("--max-parallel", type=int, help="issues: max_parallel_items (default 2)")
    s.add_argument("--no-reviewer", action="store_true",
                   help="issues: reviewer_required=false")
    cli.add_config_arg(s)
    cli.add_json_arg(s)
    s.set_defaults(handler=H + "cmd_start")

    s = msub.add_parser("list", help="list missions")
    s.add_argument("--all", action="store_true", help="also missions not in the active set")
    cli.add_config_arg(s)
    cli.add_json_arg(s)
    s.set_defaults(handler=H + "cmd_list")

    s = msub.add_parser("status", help="mission status (all active missions without ID)")
    s.add_argument("id", nargs="?")
    s.add_argument("--work", action="store_true", help="list work items")
    cli.add_config_arg(s)
    cli.add_json_arg(s)
    s.set_defaults(handler=H + "cmd_status")

    s = msub.add_parser("note", help="queue a control note (resume|retry, pause|hold, "
                                     "redirect [ITEM] to AGENT [reason], other text)")
    s.add_argument("id")
    s.add_argument("text")
    cli.add_config_arg(s)
    cli.add_json_arg(s)
    s.set_defaults(handler=H + "cmd_note")

    for name, hlp in (("pause", "pause a running mission (stays active; no new work)"),
                      ("resume", "resume a paused or stopped mission"),
                      ("stop", "stop a mission (removed from the active set)")):
        s = msub.add_parser(name, help=hlp)
        s.add_argument("id")
        if name == "stop":
            s.add_argument("--force", action="store_true", help="mark it failed")
        if name == "pause":
            s.add_argument("--reason", default="", help="text kept in blocked_reason")
        cli.add_config_arg(s)
        cli.add_json_arg(s)
        s.set_defaults(handler=H + f"cmd_{name}")


# ----------------------------------------------------------------------------- helpers
def _run(args, fn) -> int:
    return common.run(lambda: fn(args), prefix="tinytownd mission")


def _store(args):
    from tinytownd.missions.storage import MissionStore
    cfg, r, keys = common.open_redis(args, env_fallback=False)
    return cfg, r, keys, MissionStore(r, keys)


def _roles(cfg, r, keys) -> set[str]:
    from tinytownd.missions.compile import known_roles
    from tinytownd.store.town import Town
    extra = [a.role for a in cfg.agents]
    try:
        extra += [a.get("role_id") for a in Town(r, keys).list_agents()]
    except Exception:
        pass
    return known_roles(extra)


# ----------------------------------------------------------------------------- start
def cmd_start(args) -> int:
    return _run(args, _start)


def _start(args) -> int:
    from tinytownd import exitcodes
    from tinytownd.missions import compile as mc
    from tinytownd.missions import github
    from tinytownd.missions.mission import MissionPolicy
    if bool(args.file) == bool(args.issue):
        raise common.CommandError(exitcodes.USAGE, "give a mission FILE or one or more --issue REF")
    cfg, r, keys, store = _store(args)
    try:
        if args.file:
            c = mc.compile_file(args.file, roles=_roles(cfg, r, keys))
        else:
            refs = []
            for ref in args.issue:
                refs.append(github.parse_issue_ref(ref, cwd=str(cfg.root)))
            issues = [github.fetch_issue(o, rp, n, gh=cfg.missions.gh,
                                         timeout=cfg.missions.gh_timeout_s, cwd=str(cfg.root))
                      for o, rp, n in refs]
            pol = MissionPolicy()
            if args.max_parallel is not None:
                if args.max_parallel < 1:
                    raise common.CommandError(exitcodes.USAGE, "--max-parallel must be >= 1")
                pol.max_parallel_items = args.max_parallel
            if args.no_reviewer:
                pol.reviewer_required = False
            c = github.compile_issues(issues, pol)
    except FileNotFoundError:
        raise common.CommandError(exitcodes.NOINPUT, f"{args.file}: file not found")
    except mc.MissionFileError as e:
        raise common.CommandError(exitcodes.DATAERR, "invalid mission:\n" + str(e))
    except ValueError as e:
        raise common.CommandError(exitcodes.DATAERR, str(e))
    store.create(c.mission, c.items, c.cmd_watches, c.meta, c.log)
    common.output(args, {"mission": c.mission.id, "work_items": len(c.items),
                  "file_ids": c.file_ids}, c.mission.id)
    return 0


# ----------------------------------------------------------------------------- list / status
def _summary(snap) -> dict | None:
    """The list/status row of a mission snapshot (None: the mission is gone)."""
    m = snap.mission
    if m is None:
        return None
    counts: dict[str, int] = {}
    for it in snap.items.values():
        counts[it.status] = counts.get(it.status, 0) + 1
    from tinytownd.missions.mission import objective_display
    return {"id": m.id, "state": m.state,
            "objective": snap.meta.get("objective") or ", ".join(
                objective_display(o) for o in m.objective_refs),
            "items": len(snap.items), "done": counts.get("done", 0), "counts": counts,
            "blocked_reason": m.blocked_reason, "updated_at": m.to_dict()["updated_at"],
            "policy": m.policy.to_dict(), "max_attempts": snap.meta.get("max_attempts")}


def cmd_list(args) -> int:
    return _run(args, _list)


def _list(args) -> int:
    cfg, r, keys, store = _store(args)
    active = store.active_ids()
    ids = store.list_mission_ids() if args.all else sorted(active)
    rows = [s for s in (_summary(store.load(mid)) for mid in ids) if s]
    for s in rows:
        s["active"] = s["id"] in active
    lines = [f"{s['id']}  {s['state']:<9} {s['done']}/{s['items']} done  {s['objective']}"
             for s in rows] or ["no missions" + ("" if args.all else " (active; try --all)")]
    common.output(args, rows, "\n".join(lines))
    return 0


def cmd_status(args) -> int:
    return _run(args, _status)


def _status(args) -> int:
    cfg, r, keys, store = _store(args)
    if not args.id:
        ids = sorted(store.active_ids())
        rows = [s for s in (_summary(store.load(mid)) for mid in ids) if s]
        lines = [f"{s['id']}  {s['state']:<9} {s['done']}/{s['items']} done"
                 + (f"  ({s['blocked_reason']})" if s["blocked_reason"] else "")
                 for s in rows] or ["no active missions"]
        common.output(args, rows, "\n".join(lines))
        return 0
    mid = store.resolve_mission(args.id)
    snap = store.load(mid)
    s = _summary(snap)
    m = snap.mission
    s["active"] = mid in store.active_ids()
    s["lease_holder"] = store.lock_owner(mid)
    s["events"] = store.recent_log(mid, 5)
    md = m.to_dict()
    s["dispatcher"] = {k: md[k] for k in md if k.startswith("dispatcher_")}
    s["pending_notes"] = [c.body for c in sorted(snap.controls, key=lambda c: c.created_at)
                          if c.processed_at is None][:3]
    from tinytownd.runtime.agent_cli.usage import USAGE_FIELDS, usage_view

    from .agent_cli_cmds import usage_text
    s["usage"] = usage_view({f: snap.meta.get(f) for f in USAGE_FIELDS
                             if f not in ("model", "session_id")})
    s["max_cost_usd"] = usage_view({"cost_usd": snap.meta.get("max_cost_usd")}).get("cost_usd")
    s["watches"] = [{"id": w.id, "kind": w.kind, "target": w.target_ref, "status": w.status,
                     "item": w.work_item_id} for w in snap.watches.values()] + \
                   [{"id": w.id, "kind": "command", "target": w.command, "status": w.status,
                     "item": w.work_item_id} for w in snap.cmd_watches.values()]
    if args.work:
        from tinytownd.store.town import Town
        names = {a["id"]: a.get("name") for a in Town(r, keys).list_agents()}
        items = sorted(snap.items.values(), key=lambda it: (it.created_at, it.id))
        fid = {v: snap.meta.get(f"file_id:{v}") for v in snap.items}
        s["work"] = [{"id": it.id, "file_id": fid.get(it.id), "title": it.title,
                      "kind": it.kind, "status": it.status, "owner_role": it.owner_role,
                      "assigned_to": it.assigned_to,
                      "agent": names.get(it.assigned_to) if it.assigned_to else None,
                      "attempts": int(snap.meta.get(f"attempts:{it.id}", 0)),
                      "depends_on": [fid.get(d) or d for d in it.depends_on],
                      "artifacts": it.artifact_refs} for it in items]
    lines = [f"Mission {m.id}", f"  state:      {m.state}" + ("" if s["active"] else
                                                                " (not active)"),
             f"  objective:  {s['objective']}",
             f"  progress:   {s['done']}/{s['items']} done "
             f"({', '.join(f'{k} {v}' for k, v in sorted(s['counts'].items()))})",
             f"  policy:     max_parallel_items={m.policy.max_parallel_items} "
             f"reviewer_required={str(m.policy.reviewer_required).lower()} "
             f"max_attempts={s['max_attempts']}"]
    if m.blocked_reason:
        lines.append(f"  blocked:    {m.blocked_reason}")
    if s["usage"] or s["max_cost_usd"]:
        lines.append(f"  usage:      {usage_text(s['usage']) or 'none reported'}"
                     + (f" (budget ${s['max_cost_usd']:g})" if s["max_cost_usd"] else ""))
    lines.append(f"  dispatcher: {'held by ' + s['lease_holder'] if s['lease_holder'] else 'no lease'};"
                 f" last tick {md['dispatcher_last_tick_at'] or '-'}")
    if s["pending_notes"]:
        lines.append("  pending notes: " + " | ".join(s["pending_notes"]))
    if s.get("work"):
        lines.append("  work items:")
        for w in s["work"]:
            lines.append(f"    {w['id'][:8]} {w['file_id'] or '':<12} {w['status']:<8} "
                         f"{w['agent'] or '-':<14} {w['title']}"
                         + (f"  (attempts {w['attempts']})" if w["attempts"] else ""))
    if s["watches"]:
        lines.append("  watches:")
        for w in s["watches"]:
            lines.append(f"    {w['id'][:8]} {w['kind']:<16} {w['status']:<8} {w['target']}")
    if s["events"]:
        lines.append("  recent events:")
        lines += [f"    {e}" for e in s["events"]]
    common.output(args, s, "\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- note / lifecycle
def cmd_note(args) -> int:
    return _run(args, _note)


def _note(args) -> int:
    from tinytownd import exitcodes
    cfg, r, keys, store = _store(args)
    mid = store.resolve_mission(args.id)
    if not args.text.strip():
        raise common.CommandError(exitcodes.USAGE, "the note text is empty")
    c = store.add_note(mid, args.text.strip())
    n = store.retire_help(mid)
    common.output(args, {"mission": mid, "note": c.id, "retired_help": n},
           f"note {c.id} queued for mission {mid}")
    return 0


def _lifecycle(args, action: str) -> int:
    from tinytownd import exitcodes
    cfg, r, keys, store = _store(args)
    mid = store.resolve_mission(args.id)
    res = {}

    def fn(m, p):
        prev = m.state
        res["prev"] = prev
        if action == "pause":
            if m.state != "running":
                raise common.CommandError(exitcodes.DATAERR, f"mission {mid} is {m.state}; only a running "
                                               "mission can be paused")
            m.block("Paused by operator" + (f": {args.reason}" if args.reason else ""))
            store.q_log(p, mid, "Mission paused via tinytownd")
        elif action == "resume":
            if m.state not in ("blocked", "planning"):
                if m.state == "running":
                    store.q_active(p, mid, True)
                    res["noop"] = True
                    return
                raise common.CommandError(exitcodes.DATAERR, f"mission {mid} is {m.state}; it cannot be "
                                               "resumed")
            m.start()
            m.clear_help_request_state()
            store.q_active(p, mid, True)
            store.q_log(p, mid, "Mission resumed via tinytownd")
        else:  # stop
            if args.force:
                m.fail("Stopped by user (forced)")
            else:
                m.block("Stopped by user")
            m.clear_help_request_state()
            store.q_active(p, mid, False)
            store.q_log(p, mid, "Mission stopped via tinytownd" +
                        (" (forced)" if args.force else ""))
        store.q_wake(p, mid, "resumed" if action == "resume" else action)
    store.update_mission(mid, fn)
    retired = store.retire_help(mid) if action in ("resume", "stop") else 0
    state = store.get_mission(mid).state
    common.output(args, {"mission": mid, "previous": res.get("prev"), "state": state,
                  "retired_help": retired},
           f"mission {mid}: {res.get('prev')} -> {state}" +
           (" (already running)" if res.get("noop") else ""))
    return 0


def cmd_pause(args) -> int:
    return _run(args, lambda a: _lifecycle(a, "pause"))


def cmd_resume(args) -> int:
    return _run(args, lambda a: _lifecycle(a, "resume"))


def cmd_stop(args) -> int:
    return _run(args, lambda a: _lifecycle(a, "stop"))
