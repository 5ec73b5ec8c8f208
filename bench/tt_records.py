#!/usr/bin/env python3
"""What `tt` sees after a small workload, normalized, so two checkouts can be compared.

    <venv>/bin/python bench/tt_records.py [--task-events lifecycle|terminal|none] > out.json
    python bench/tt_records.py --diff before.json after.json

Runs an embedded daemon (its own redis-server in a temp dir) with one agent whose CLI is `true`,
a 20-task batch through the batch dispatcher, then one `Town.assign` (the runtime's own path),
and dumps every tt key (`tt:<town>:…`, not the daemon's `tinytownd:` keys): its type, hash fields
and values, list entries, stream entries (event_type, the TownEvent's fields), with ids replaced
by their order of first appearance and timestamps by "<ts>". One agent, so the order is the
same from run to run. Imports `tinytownd` from whichever checkout the interpreter's venv has
installed (each worktree's .venv has its own), so the same script compares both.
"""
from __future__ import annotations

import json
import re
import sys

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


class Norm:
    def __init__(self):
        self.ids: dict[str, str] = {}

    def __call__(self, s: str) -> str:
        s = TS.sub("<ts>", s)
        return UUID.sub(lambda m: self.ids.setdefault(m.group(0), f"<id{len(self.ids)}>"), s)


def snapshot(task_events: str | None) -> dict:
    from gevent import monkey
    monkey.patch_all()
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    import gevent

    from tinytownd.batch.agents import agent_sections, embedded_config, roster
    from tinytownd.batch.dispatch import DispatchedBatch
    from tinytownd.batch.file import parse
    from tinytownd.daemon.lifecycle import Daemon

    root = Path(tempfile.mkdtemp(prefix="ttr-", dir="/tmp"))
    try:
        bf = parse({"tasks": [{"id": f"t{i}", "description": f"task {i}"} for i in range(20)]},
                   "gen")
        clis, agents = agent_sections(bf, agents=1, cli="true")
        cfg = embedded_config(bf, root, clis, agents)
        if task_events and hasattr(cfg.runtime, "task_events"):
            cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(
                cfg.runtime, task_events=task_events))
        d = Daemon(cfg, install_signals=False)
        d.start()
        g = gevent.spawn(d.run)
        r, keys = d.ctx.clients.cmd, d.ctx.keys
        try:
            batch = DispatchedBatch(bf, "ttr", r, keys, roster=roster(cfg))
            if hasattr(batch.town, "task_events"):
                batch.town.task_events = cfg.runtime.task_events
            batch.wait_agents()
            batch.subscribe()
            batch.write_meta()
            batch.submit()
            batch.start_dispatch(fresh=True)
            assert batch.follow()
            batch.close()
            town = d.ctx.extra["town"]
            aid = next(iter(batch.agent_words))
            tid = town.assign(aid, "one more, the runtime's way")
            deadline = gevent.get_hub().loop.now() + 20
            while r.hget(keys.task(tid), "state") != "completed" or \
                    r.hget(keys.agent(aid), "state") != "idle":
                if gevent.get_hub().loop.now() > deadline:
                    raise SystemExit("the last task did not complete")
                gevent.sleep(0.05)
            gevent.sleep(0.3)
            return dump(r, keys)
        finally:
            d.request_stop(graceful=True)
            g.join(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def dump(r, keys) -> dict:
    norm = Norm()
    out = {}
    # ids in a stable order: the agent first, then tasks in backlog/batch order
    for key in sorted(r.scan_iter(match=keys.prefix + "agent:*")):
        norm(key)
    for tid in r.lrange(keys.batch_tasks("ttr"), 0, -1):
        norm(tid)
    for key in sorted(r.scan_iter(match=keys.prefix + "*")):
        if key.startswith(keys.daemon_prefix):
            continue
        t = r.type(key)
        name = norm(key)
        if t == "hash":
            val = {f: norm(v) for f, v in sorted(r.hgetall(key).items())}
        elif t == "list":
            val = [norm(x) for x in r.lrange(key, 0, -1)]
            ttl = r.ttl(key)
            val = {"entries": val, "expires": ttl > 0}
        elif t == "stream":
            val = []
            for _i, f in r.xrange(key):
                ev = json.loads(f["data"])
                val.append({"event_type": f["event_type"],
                            **{k: norm(str(v)) for k, v in sorted(ev.items())}})
        else:
            val = norm(str(r.get(key))) if t == "string" else t
        out[name] = {"type": t, "value": val}
    return out


def _events(entries) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in entries)


def diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"+ {k} ({b[k]['type']}): only after")
        elif k not in b:
            out.append(f"- {k} ({a[k]['type']}): only before")
        elif a[k] != b[k]:
            va, vb = a[k]["value"], b[k]["value"]
            if isinstance(va, dict) and isinstance(vb, dict) and "entries" not in va:
                for f in sorted(set(va) | set(vb)):
                    if va.get(f) != vb.get(f):
                        out.append(f"~ {k} field {f}: {va.get(f)!r} -> {vb.get(f)!r}")
            elif a[k]["type"] == "stream" and _events(va) == _events(vb):
                out.append(f"~ {k} stream: the same {len(va)} events, in another order "
                           "(the dispatcher's and the agent's events interleave by timing)")
            elif a[k]["type"] == "stream":
                ta = [e["event_type"] for e in va]
                tb = [e["event_type"] for e in vb]
                out.append(f"~ {k} stream: {len(va)} events {sorted(set(ta))} -> {len(vb)} "
                           f"events {sorted(set(tb))}")
            else:
                out.append(f"~ {k}: {va!r} -> {vb!r}")
    return out


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--diff"]:
        a, b = (json.load(open(p)) for p in args[1:3])
        lines = diff(a, b)
        print("\n".join(lines) if lines else "identical")
        return
    te = args[args.index("--task-events") + 1] if "--task-events" in args else None
    print(json.dumps(snapshot(te), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
