"""Views of a running town: `tinytownd events` (the town stream, newest first-N, -f follows with
blocking reads) and `tinytownd logs` (the round logs of a task or an agent, following a running
round). Read-only. Exit codes: 64 usage, 65 unknown task/agent/round, 69 Redis, 78 config."""
from __future__ import annotations

import json
import os
import sys
import time

from tinytownd import cli, exitcodes

from . import common

H = "tinytownd.commands.view_cmds:"
MAX_EVENTS = 1000            # the town stream keeps ~1000 (MAXLEN ~)
FOLLOW_BLOCK_MS = 5000
LOG_POLL_S = 0.25
LOG_CHUNK = 65536


def _bounded(lo: int, hi: int):
    def parse(text: str) -> int:
        import argparse
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is outside {lo}..{hi}")
        return n
    return parse


def register(sub) -> None:
    p = sub.add_parser("events", help="the town's newest events (-f: follow)",
                       description="Print the newest N events of the town stream, oldest of "
                                   "them first; -f then follows new ones (blocking reads).")
    cli.add_config_arg(p)
    cli.add_json_arg(p)
    p.add_argument("-n", type=_bounded(1, MAX_EVENTS), default=20, metavar="N",
                   help=f"how many of the newest events (1..{MAX_EVENTS}, default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--agent", help="only events that name this agent (name or id)")
    p.add_argument("--mission", help="only events of this mission (id)")
    p.set_defaults(handler=H + "cmd_events")
    p = sub.add_parser("logs", help="the round logs of a task or an agent (-f: follow)",
                       description="Print the round log of a task (its latest attempt) or an "
                                   "agent (its latest round); -f follows a running round.")
    cli.add_config_arg(p)
    p.add_argument("target", metavar="TASK_OR_AGENT", help="task id (or prefix) or agent")
    p.add_argument("-f", "--follow", action="store_true", help="follow the running round")
    p.add_argument("--round", type=_bounded(1, 10 ** 9), metavar="N",
                   help="an agent's round N, or a task's attempt N")
    p.set_defaults(handler=H + "cmd_logs")


# ----------------------------------------------------------------------------- events
def _newest(r, key: str, n: int, match) -> list[dict]:
    """The newest `n` events that pass `match`, oldest first (pages of XREVRANGE)."""
    from tinytownd.http import feed

    out, end = [], "+"
    while len(out) < n:
        page = r.xrevrange(key, max=end, count=200)
        for eid, fields in page:
            if eid == end:
                continue
            ev = feed.decode(eid, fields)
            if match(ev):
                out.append(ev)
                if len(out) == n:
                    break
        if len(page) < 200:
            break
        end = page[-1][0]
    return list(reversed(out))


def cmd_events(args) -> int:
    def fn():
        from tinytownd.http import feed

        town, _cfg = common.open_town(args)
        agents = {town.resolve_agent(args.agent)} if args.agent else None

        def match(ev):
            return feed.matches(ev, agents=agents, mission=args.mission)

        def show(ev):
            print(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) if args.json
                  else feed.line(ev), flush=True)

        key = town.keys.events
        evs = _newest(town.r, key, args.n, match)
        for ev in evs:
            show(ev)
        if not args.follow:
            return 0
        newest = town.r.xrevrange(key, count=1)
        last = newest[0][0] if newest else "0-0"
        try:
            while True:
                res = town.r.xread({key: last}, count=200, block=FOLLOW_BLOCK_MS)
                for _k, entries in res or ():
                    for eid, fields in entries:
                        last = eid
                        ev = feed.decode(eid, fields)
                        if match(ev):
                            show(ev)
        except KeyboardInterrupt:
            return 0
    return common.run(fn)


# ----------------------------------------------------------------------------- logs
def _task_logs(town, tid: str, logs_dir: str) -> list[tuple[int, str]]:
    """(attempt, file name) of the task's rounds, oldest first: the logs whose names carry the
    task id, and those `log:<attempt>` of its daemon record names (logs of older daemons)."""
    from tinytownd.runtime.round_logs import task_of
    meta = town.get_task_meta(tid)
    files = {v for k, v in meta.items() if k.startswith("log:") and k[4:].isdigit()}
    try:
        files.update(f for f in os.listdir(logs_dir) if task_of(f) == tid)
    except OSError:
        pass

    def mtime(f):
        try:
            return os.stat(os.path.join(logs_dir, f)).st_mtime
        except OSError:
            return 0.0
    return list(enumerate(sorted(files, key=mtime), 1))


def _agent_logs(logs_dir: str, name: str) -> list[tuple[int, str]]:
    from tinytownd.runtime.round_logs import log_pattern
    pat = log_pattern(name)
    try:
        names = os.listdir(logs_dir)
    except OSError:
        return []
    return sorted((int(m.group(1)), f) for f in names if (m := pat.match(f)))


def _resolve(town, ref: str):
    """('task', tid) or ('agent', aid, name)."""
    from .town_cmds import _task_id
    try:
        return ("task", _task_id(town, ref))
    except LookupError:
        pass
    aid = town.resolve_agent(ref)
    rec = town.get_agent(aid) or {}
    return ("agent", aid, rec.get("name") or ref)


def _running(town, kind, ident, rnd: int) -> bool:
    """Is the round whose log we show still running?"""
    if kind == "task":
        return (town.get_task(ident) or {}).get("state") == "running"
    info = town.r.hgetall(town.keys.agent_info(ident))
    return str(rnd) == info.get("round") and \
        (town.get_agent(ident) or {}).get("state") == "working"


def cmd_logs(args) -> int:
    def fn():
        town, cfg = common.open_town(args, env_fallback=False)
        logs_dir = cfg.logs_dir_str
        target = _resolve(town, args.target)
        if target[0] == "task":
            logs = _task_logs(town, target[1], logs_dir)
            what = f"task {target[1]}"
        else:
            logs = _agent_logs(logs_dir, target[2])
            what = f"agent {target[2]}"
        if not logs:
            raise common.CommandError(exitcodes.DATAERR, f"no round logs for {what}")
        if args.round is not None:
            picked = [x for x in logs if x[0] == args.round]
            if not picked:
                have = ", ".join(str(n) for n, _ in logs[-10:])
                raise common.CommandError(exitcodes.DATAERR, f"{what} has no round {args.round} "
                                                             f"(has: {have})")
            n, fname = picked[0]
        else:
            n, fname = logs[-1]
        latest = n == logs[-1][0]
        path = os.path.join(logs_dir, os.path.basename(fname))
        return _print_log(path, follow=args.follow,
                          running=lambda: latest and _running(town, target[0], target[1], n))
    return common.run(fn)


def _print_log(path: str, *, follow: bool, running) -> int:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise common.CommandError(exitcodes.DATAERR, f"{path}: no such log (the round wrote "
                                                     "no output, or the log was rotated away)") from None
    out = sys.stdout.buffer
    with f:
        try:
            while True:
                chunk = f.read(LOG_CHUNK)
                if chunk:
                    out.write(chunk)
                    out.flush()
                    continue
                if not follow or not running():
                    rest = f.read()
                    out.write(rest)
                    out.flush()
                    return 0
                time.sleep(LOG_POLL_S)
        except KeyboardInterrupt:
            return 0
