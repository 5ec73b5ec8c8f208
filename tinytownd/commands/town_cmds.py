"""Operator commands on a town: agents, tasks, assign, backlog, send, inbox, task, agent control,
dead letters (how they reach Redis and their exit codes: common.py)."""
from __future__ import annotations

import argparse
import json
import os

from tinytownd import cli, exitcodes

from . import common

H = "tinytownd.commands.town_cmds:"


def _common(p) -> None:
    """-c/--json also after a nested action (`task show ID --json`), without clobbering them."""
    p.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
                   help="config file (default: $TINYTOWND_CONFIG)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def register(sub) -> None:
    def add(name, handler, help, *, json_arg=True):
        p = sub.add_parser(name, help=help, description=help)
        cli.add_config_arg(p)
        if json_arg:
            cli.add_json_arg(p)
        p.set_defaults(handler=H + handler)
        return p

    add("agents", "cmd_agents", "list the town's agents")
    p = add("tasks", "cmd_tasks", "list the town's tasks")
    p.add_argument("--state", help="only tasks in this state")
    p = add("assign", "cmd_assign", "assign a new task to an agent (prints the task id)")
    p.add_argument("agent")
    p.add_argument("description")
    p.add_argument("--tags", default="", help="comma-separated tags")
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-round timeout")
    p = add("backlog", "cmd_backlog", "add to or list the backlog of unassigned tasks")
    bsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli.Parser)
    bsub.required = True
    b = bsub.add_parser("add", help="add a pending task to the backlog")
    _common(b)
    b.add_argument("description")
    b.add_argument("--tags", default="", help="comma-separated tags (roles that may claim it)")
    b.add_argument("--max-attempts", type=int)
    b.add_argument("--timeout", type=float, metavar="SECONDS")
    _common(bsub.add_parser("list", help="list backlog tasks"))
    p = add("send", "cmd_send", "send a message to an agent")
    p.add_argument("agent")
    p.add_argument("text")
    p.add_argument("--urgent", action="store_true", help="urgent list (read before the inbox)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--query", action="store_true")
    kind.add_argument("--info", action="store_true")
    p.add_argument("--from", dest="sender", help="sender agent (default: the supervisor)")
    p = add("inbox", "cmd_inbox", "show an agent's queued messages")
    p.add_argument("agent")
    p = add("task", "cmd_task", "show, complete or fail a task")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli.Parser)
    tsub.required = True
    t = tsub.add_parser("show", help="show a task")
    _common(t)
    t.add_argument("id")
    for action in ("complete", "fail"):
        t = tsub.add_parser(action, help=f"{action} a task")
        _common(t)
        t.add_argument("id", nargs="?", help="task id (default: $TINYTOWN_TASK_ID)")
        t.add_argument("--result", "-r", help="result text (fail: the error)")
    for name, text in (("interrupt", "pause an agent (no new rounds)"),
                       ("resume", "resume a paused (or stopped) agent"),
                       ("close", "drain an agent: finish the round, then stop"),
                       ("kill", "stop an agent now (a running CLI is killed, its task requeued)")):
        p = add(name, "cmd_control", text)
        p.add_argument("agent")
        p.set_defaults(op=name)
    p = add("deadletter", "cmd_deadletter", "list or requeue dead-lettered messages")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli.Parser)
    dsub.required = True
    _common(dsub.add_parser("list", help="list dead letters"))
    d = dsub.add_parser("requeue", help="put dead letters back on their queue")
    _common(d)
    d.add_argument("ids", nargs="*", help="entry ids (default: all that can be read)")


# ----------------------------------------------------------------------------- helpers
def _run(args, fn) -> int:
    def go():
        town, cfg = common.open_town(args)
        return fn(town, cfg)
    return common.run(go)


def _tags(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _task_id(town, ref: str) -> str:
    from tinytownd.store.wire import canonical_id, is_uuid

    ref = (ref or "").strip()
    if is_uuid(ref):
        tid = canonical_id(ref)
        if town.get_task(tid) is None:
            raise LookupError(f"unknown task {ref!r}")
        return tid
    if len(ref) >= 4:
        hits = [t["id"] for t in town.list_tasks() if t["id"].startswith(ref.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise LookupError(f"ambiguous task reference {ref!r}: {len(hits)} tasks match")
    raise LookupError(f"unknown task {ref!r}")


# ----------------------------------------------------------------------------- commands
def cmd_agents(args) -> int:
    def fn(town, cfg):
        agents = town.list_agents()
        k = town.keys
        p = town.r.pipeline(transaction=False)
        from tinytownd.runtime.agent_cli.usage import usage_view
        from tinytownd.store.cli_state import CliState

        from .agent_cli_cmds import cli_state_line, usage_text
        for a in agents:
            p.llen(k.inbox(a["id"]))
            p.llen(k.urgent(a["id"]))
            p.get(k.agent_lease(a["id"]))
            p.hgetall(k.agent_info(a["id"]))
        res = p.execute()
        clis = CliState(town.r, k).read({a.get("cli") or "" for a in agents} - {""})
        out = []
        for i, a in enumerate(agents):
            info = res[4 * i + 3] or {}
            st = clis.get(a.get("cli") or "", {})
            out.append({**a, "inbox": res[4 * i], "urgent": res[4 * i + 1],
                        "owner": res[4 * i + 2], "usage": usage_view(
                            {f: info.get(f) for f in ("input_tokens", "output_tokens",
                                                      "cached_tokens", "cost_usd", "turns")}),
                        "cli_state": st if len(st) > 1 else None})
        rows = [[a.get("name", ""), a["id"][:8], a.get("role_id") or "-", a.get("state", "?"),
                 a.get("cli", ""), (a.get("current_task") or "-")[:8],
                 a.get("rounds_completed", "0"), a.get("tasks_completed", "0"),
                 f"{a['inbox']}+{a['urgent']}u", "yes" if a["owner"] else "no",
                 "paused" if (a["cli_state"] or {}).get("paused") else
                 "cooldown" if (a["cli_state"] or {}).get("cooldown_until") else "-",
                 f"${a['usage']['cost_usd']:.4f}" if "cost_usd" in a["usage"] else "-"]
                for a in out]
        human = common.table(rows, ["NAME", "ID", "ROLE", "STATE", "CLI", "TASK", "ROUNDS",
                                    "DONE", "QUEUED", "RUN", "CLI STATE", "COST"])
        extra = [ln for ln in map(cli_state_line, clis.values()) if ln]
        common.output(args, out, "\n".join([human, *extra]))
    return _run(args, fn)


def cmd_tasks(args) -> int:
    def fn(town, cfg):
        tasks = town.list_tasks()
        if args.state:
            tasks = [t for t in tasks if t.get("state") == args.state]
        rows = [[t["id"][:8], t.get("state", "?"), (t.get("assigned_to") or "-")[:8],
                 t.get("tags", "[]"), t.get("description", "")[:60].replace("\n", " ")]
                for t in tasks]
        common.output(args, tasks, common.table(rows, ["ID", "STATE", "AGENT", "TAGS", "DESCRIPTION"]))
    return _run(args, fn)


def cmd_assign(args) -> int:
    def fn(town, cfg):
        aid = town.resolve_agent(args.agent)
        tid = town.assign(aid, args.description, tags=_tags(args.tags),
                          max_attempts=args.max_attempts, timeout_s=args.timeout)
        common.output(args, {"task": tid, "agent": aid}, tid)
    return _run(args, fn)


def cmd_backlog(args) -> int:
    def fn(town, cfg):
        if args.action == "add":
            tid = town.backlog_add(args.description, tags=_tags(args.tags),
                                   max_attempts=args.max_attempts, timeout_s=args.timeout)
            common.output(args, {"task": tid}, tid)
            return 0
        ids = town.backlog_list()
        tasks = []
        for tid in ids:
            t = town.get_task(tid)
            tasks.append(t or {"id": tid, "state": "missing"})
        rows = [[t["id"][:8], t.get("state", "?"), t.get("tags", "[]"),
                 t.get("description", "")[:60].replace("\n", " ")] for t in tasks]
        common.output(args, tasks, common.table(rows, ["ID", "STATE", "TAGS", "DESCRIPTION"]))
    return _run(args, fn)


def cmd_send(args) -> int:
    def fn(town, cfg):
        from tinytownd.store.wire import SUPERVISOR_ID

        aid = town.resolve_agent(args.agent)
        sender = town.resolve_agent(args.sender) if args.sender else \
            (os.environ.get("TINYTOWN_AGENT_ID") or SUPERVISOR_ID)
        if args.query:
            mid = town.send(aid, "query", urgent=args.urgent, sender=sender, question=args.text)
        elif args.info:
            mid = town.send(aid, "informational", urgent=args.urgent, sender=sender,
                            summary=args.text)
        else:
            mid = town.send(aid, "task", urgent=args.urgent, sender=sender,
                            description=args.text)
        common.output(args, {"message": mid, "agent": aid, "urgent": args.urgent}, mid)
    return _run(args, fn)


def cmd_inbox(args) -> int:
    def fn(town, cfg):
        from tinytownd.store import records

        aid = town.resolve_agent(args.agent)
        k = town.keys
        out = []
        for src, key in (("urgent", k.urgent(aid)), ("inflight", k.inflight_urgent(aid)),
                         ("inflight", k.inflight(aid)), ("inbox", k.inbox(aid))):
            for raw in town.r.lrange(key, 0, -1):
                try:
                    m = records.decode_message(raw)
                    out.append({"list": src, **m})
                except records.Poison as e:
                    out.append({"list": src, "unreadable": e.reason, "raw": raw})
        rows = [[m["list"], m.get("type", "?"), (m.get("id") or "-")[:8],
                 records.message_text(m)[:70] if "type" in m else m.get("raw", "")[:70]]
                for m in out]
        common.output(args, out, common.table(rows, ["LIST", "TYPE", "ID", "TEXT"]))
    return _run(args, fn)


def cmd_task(args) -> int:
    def fn(town, cfg):
        ref = args.id or (os.environ.get("TINYTOWN_TASK_ID") if args.action != "show" else None)
        if not ref:
            raise LookupError("no task id given and $TINYTOWN_TASK_ID is not set")
        tid = _task_id(town, ref)
        if args.action == "show":
            from tinytownd.runtime.agent_cli.usage import USAGE_FIELDS, usage_view

            from .agent_cli_cmds import usage_text
            t = town.get_task(tid)
            meta = town.get_task_meta(tid)
            used = usage_view({f: meta.get(f) for f in USAGE_FIELDS})
            try:
                failures = json.loads(meta.get("failures") or "[]")
            except ValueError:
                failures = []
            obj = {**t, "daemon": meta, "usage": used, "failures": failures}
            human = "\n".join(f"{k}: {v}" for k, v in t.items())
            if meta:
                human += "\n" + "\n".join(f"daemon.{k}: {v}" for k, v in meta.items()
                                           if k != "failures")
            if used:
                human += f"\nusage: {usage_text(used)}" + "".join(
                    f"; {k} {used[k]}" for k in ("model", "session_id") if k in used)
            for i, f in enumerate(failures if isinstance(failures, list) else [], 1):
                if isinstance(f, dict):
                    human += f"\nfailed round {i}: [{f.get('class')}] {f.get('error')}"
            ws = workspace_of(meta)
            if ws:
                obj["workspace"] = ws
                human += "\n" + "\n".join(f"workspace.{k}: {v}" for k, v in ws.items()
                                           if v is not None)
            common.output(args, obj, human)
            return 0
        if args.action == "complete":
            changed = town.complete_task(tid, args.result)
        else:
            changed = town.fail_task(tid, args.result or "Failed")
        state = town.get_task(tid)["state"]
        note = "" if changed else f" (already {state}; unchanged)"
        common.output(args, {"task": tid, "state": state, "changed": changed}, f"{tid} {state}{note}")
    return _run(args, fn)


def workspace_of(meta: dict) -> dict | None:
    """The task's workspace (worktree mode): branch, base, head, counts, worktree path."""
    if not meta.get("base"):
        return None
    from tinytownd.workspaces.records import summary_fields
    return {**summary_fields(meta), "worktree": meta.get("worktree")}


def cmd_control(args) -> int:
    def fn(town, cfg):
        from tinytownd.store import agent_control

        aid = town.resolve_agent(args.agent)
        old = agent_control.ACTIONS[args.op](town, aid)
        new = town.get_agent(aid)["state"]
        common.output(args, {"agent": aid, "op": args.op, "old_state": old, "state": new},
             f"{args.agent}: {old} -> {new}")
    return _run(args, fn)


def cmd_deadletter(args) -> int:
    def fn(town, cfg):
        from tinytownd.store import records

        k = town.keys
        raws = town.r.lrange(k.deadletter, 0, -1)
        entries = []
        for raw in raws:
            try:
                e = json.loads(raw)
            except ValueError:
                e = {"id": None, "reason": "unreadable entry", "raw": raw}
            entries.append((raw, e))
        if args.action == "list":
            out = [e for _r, e in entries]
            rows = [[(e.get("id") or "-")[:8], e.get("at", "")[:19], e.get("reason", "")[:40],
                     e.get("source", "")[-44:], (e.get("task") or "-")[:8]] for e in out]
            common.output(args, out, common.table(rows, ["ID", "AT", "REASON", "SOURCE", "TASK"]))
            return 0
        want = set(args.ids)
        done, skipped = [], []
        for raw, e in entries:
            eid = e.get("id") or ""
            if want and not any(eid.startswith(w) for w in want):
                continue
            try:
                msg = records.decode_message(e.get("raw"))
            except records.Poison as p:
                skipped.append({"id": eid, "reason": f"still unreadable: {p.reason}"})
                continue
            src = town.requeue_deadletter(raw, e, msg)
            done.append({"id": eid, "to": src})
        common.output(args, {"requeued": done, "skipped": skipped},
             f"requeued {len(done)}" + (f", skipped {len(skipped)}: " +
                                        "; ".join(f"{s['id'][:8]} {s['reason']}"
                                                  for s in skipped) if skipped else ""))
        return 0 if not (want and not done) else exitcodes.DATAERR
    return _run(args, fn)
