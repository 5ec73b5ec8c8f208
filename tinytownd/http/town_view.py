"""What the listener reads from Redis: one view of the town, shared by /metrics, /api/scaling and
the dashboard, read within a time budget and kept for VIEW_TTL_S (many scrapers, one read).

Two depths of a view, one read: the dashboard's (AGENT_FIELDS of each agent, sorted by name)
and the counts' (COUNT_FIELDS: the id, state, CLI, current task and last activity that
/metrics and /api/scaling count; at 1,000 agents reading and parsing the eleven fields was
most of a scrape's CPU). A fresh full view answers a counts request too.

Two speeds:
* every view (cheap, pipelined): PING, each agent's record fields, inbox/urgent lengths, the
  task messages waiting in non-empty inboxes, backlog, active missions, dead letters (and their
  count ever), the cooldown of each agent CLI in use;
* the key scan (one SCAN of the town's keys: agent, task and batch keys, then each task's
  state) runs in a greenlet of its own at most every SCAN_EVERY_S, so a scrape never pays for a
  town with many tasks; a view uses the latest scan.
Nothing here writes.
"""
from __future__ import annotations

import time

import gevent
import gevent.lock
import redis

from tinytownd.runtime import gc_tuning
from tinytownd.store import cli_state
from tinytownd.store.keys import glob_escape
from tinytownd.store.raw_pipe import pack_all, raw_pipeline

VIEW_TTL_S = 0.5
SCAN_EVERY_S = 2.0        # at most this often ...
SCAN_SHARE = 0.05         # ... and so that scanning takes at most 5% of the time
SCAN_AFTER_S = 0.2        # ... starting this long after the view that found it stale
SCAN_COUNT = 1000
PIPE_CHUNK = 1000
INBOX_PEEK = 100          # townhall counts the task messages among the first 100 of an inbox
PEEK_BUDGET = 20_000      # inbox messages looked at per view, over all agents
AGENT_FIELDS = ("id", "name", "nickname", "role_id", "state", "cli", "current_task",
                "rounds_completed", "tasks_completed", "last_active_at", "last_heartbeat")
COUNT_FIELDS = ("id", "state", "cli", "current_task", "last_active_at")   # what is counted


class Unavailable(Exception):
    """Redis did not answer within the budget (or refused)."""


def _is_task_message(raw: str) -> bool:
    return '"type":"task_assign"' in raw or '"type":"task"' in raw


class KeyScan:
    """The latest scan of the town's keys: agent ids, task states, batch ids."""

    def __init__(self):
        self.agent_ids: list[str] = []
        self.task_states: dict[str, str] = {}
        self.batch_ids: list[str] = []
        self.batch_tasks: dict[str, list[str]] = {}   # batch id -> its task ids
        self.at: float | None = None        # time.monotonic() of the last complete scan
        self.scan_ms: float | None = None
        self.error: str | None = None


def scan_town(r: redis.Redis, keys) -> KeyScan:
    t0 = time.monotonic()
    out = KeyScan()
    agent_p, task_p = keys.prefix + "agent:", keys.prefix + "task:"
    batch_p = keys.daemon_prefix + "batch:"
    task_ids = []
    for key in r.scan_iter(match=f"tt:{glob_escape(keys.town)}:*", count=SCAN_COUNT):
        if key.startswith(agent_p):
            out.agent_ids.append(key[len(agent_p):])
        elif key.startswith(task_p):
            task_ids.append(key[len(task_p):])
        elif key.startswith(batch_p) and ":" not in key[len(batch_p):]:
            out.batch_ids.append(key[len(batch_p):])
    for i in range(0, len(task_ids), PIPE_CHUNK):
        part = task_ids[i:i + PIPE_CHUNK]
        states = raw_pipeline(r, [("HGET", keys.task(tid), "state") for tid in part])
        for tid, st in zip(part, states):
            if isinstance(st, str):         # not an error reply (a task key that is no hash)
                out.task_states[tid] = st
    if out.batch_ids:
        lists = raw_pipeline(r, [("LRANGE", keys.batch_tasks(bid), 0, -1)
                                 for bid in out.batch_ids])
        for bid, tids in zip(out.batch_ids, lists):
            out.batch_tasks[bid] = tids if isinstance(tids, list) else []
    out.at = time.monotonic()
    out.scan_ms = round((out.at - t0) * 1000, 1)
    return out


class TownView:
    """The town as the listener shows it. `get(budget_s)` returns a dict or raises Unavailable."""

    def __init__(self, client_fn, keys):
        self._client = client_fn            # () -> redis.Redis (the daemon's command pool)
        self.keys = keys
        self.scan = KeyScan()
        self._scanner: gevent.Greenlet | None = None
        self._views: dict[tuple, tuple[dict, float]] = {}   # fields -> (view, monotonic)
        self._lock = gevent.lock.Semaphore()
        self._packed: dict[tuple, tuple[tuple, list, bytes]] = {}  # fields -> (ids and CLIs,
        #                                                             commands, packed bytes)
        self._clis: list[str] = []          # the agent CLIs the last view saw

    # --- the key scan ---------------------------------------------------------------------
    def _scan_now(self) -> None:
        try:
            self.scan = scan_town(self._client(), self.keys)
        except (redis.RedisError, OSError) as e:
            self.scan.error = f"{type(e).__name__}: {e}"

    def _want_scan(self) -> gevent.Greenlet | None:
        every = max(SCAN_EVERY_S, (self.scan.scan_ms or 0) / 1000 / SCAN_SHARE)
        stale = self.scan.at is None or time.monotonic() - self.scan.at > every
        if stale and (self._scanner is None or self._scanner.dead):
            # the first scan now (the first view waits for it); later ones after the view
            # that asked has been served, not beside it (a scan beside a scrape was its tail)
            later = SCAN_AFTER_S if self.scan.at is not None else 0
            self._scanner = gevent.spawn_later(later, self._scan_now)
        return self._scanner

    # --- the view -------------------------------------------------------------------------
    def get(self, budget_s: float, fields: tuple = AGENT_FIELDS) -> dict:
        """The view with `fields` of each agent (AGENT_FIELDS, sorted by name; or COUNT_FIELDS,
        unsorted), at most VIEW_TTL_S old."""
        with self._lock:                     # one read at a time; the others share it
            now = time.monotonic()
            for f in (AGENT_FIELDS, fields):     # a full view answers for any depth
                view, at = self._views.get(f, (None, 0.0))
                if view is not None and now - at < VIEW_TTL_S:
                    return view
            try:
                with gevent.Timeout(budget_s, Unavailable(f"no answer from Redis within "
                                                          f"{budget_s}s")), gc_tuning.paused():
                    view = self._read(time.monotonic() + budget_s, fields)
            except (redis.RedisError, OSError) as e:
                raise Unavailable(f"{type(e).__name__}: {e}") from None
            self._views[fields] = (view, time.monotonic())
            return view

    def _commands(self, ids: list[str], clis: list[str],
                  fields: tuple) -> tuple[list[tuple], bytes]:
        """The view's commands for agents `ids`, CLIs `clis` and agent `fields`, and their
        packed bytes, made again only when those change (packing 3,000 commands costs more
        than Redis takes to serve them)."""
        key = (tuple(ids), tuple(clis))
        packed = self._packed.get(fields)
        if packed is None or packed[0] != key:
            k = self.keys
            cmds = [("LLEN", k.backlog), ("SCARD", k.missions_active), ("LLEN", k.deadletter),
                    ("GET", k.deadletter_count)]
            cmds += [("HGET", k.cli(c), "cooldown_until") for c in clis]
            for aid in ids:
                cmds += (("HMGET", k.agent(aid), *fields), ("LLEN", k.inbox(aid)),
                         ("LLEN", k.urgent(aid)))
            packed = self._packed[fields] = (key, cmds, pack_all(cmds))
        return packed[1], packed[2]

    def _read(self, deadline: float, fields: tuple) -> dict:
        """At most three round trips, two for a town with empty inboxes: PING with the agent
        names; everything per agent and per CLI (the CLIs the last view saw); the task messages
        of non-empty inboxes and the cooldowns of CLIs new since the last view."""
        t0 = time.monotonic()
        r, k = self._client(), self.keys
        _pong, named = raw_pipeline(r, [("PING",), ("HVALS", k.agent_names)])
        latency = time.monotonic() - t0
        if not isinstance(named, list):
            named = []                       # not a hash: the agents of the key scan
        scanner = self._want_scan()
        if self.scan.at is None and scanner is not None:   # the first view waits for a scan
            scanner.join(timeout=max(0.0, deadline - time.monotonic() - 0.05))
        ids = list(dict.fromkeys([*self.scan.agent_ids, *named]))
        known_clis = self._clis
        cmds, packed = self._commands(ids, known_clis, fields)
        res = raw_pipeline(r, cmds, packed)
        backlog, missions, dead = (x if isinstance(x, int) else 0 for x in res[:3])
        dead_total = int(res[3]) if isinstance(res[3], str) and res[3].isdigit() else 0
        until = dict(zip(known_clis, res[4:4 + len(known_clis)]))
        base = 4 + len(known_clis)
        agents: list[dict] = []
        for j in range(len(ids)):
            rec, inbox, urgent = res[base + 3 * j:base + 3 + 3 * j]
            if not isinstance(rec, list) or rec[0] is None:
                continue                 # gone, or not a hash
            a = dict(zip(fields, rec))
            a["inbox"] = inbox if isinstance(inbox, int) else 0
            a["urgent"] = urgent if isinstance(urgent, int) else 0
            a["assigned_pending"] = 0
            agents.append(a)
        busy, budget = [], PEEK_BUDGET
        for a in agents:
            if a["inbox"] and budget > 0:
                n = min(INBOX_PEEK, budget)
                budget -= n
                busy.append((a, n))
        clis = sorted({a["cli"] for a in agents if isinstance(a.get("cli"), str) and a["cli"]})
        new_clis = [c for c in clis if c not in until]
        if busy or new_clis:
            res = raw_pipeline(r, [("HGET", k.cli(c), "cooldown_until") for c in new_clis]
                               + [("LRANGE", k.inbox(a["id"]), 0, n - 1) for a, n in busy])
            until.update(zip(new_clis, res))
            for (a, _n), msgs in zip(busy, res[len(new_clis):]):
                if isinstance(msgs, list):
                    a["assigned_pending"] = sum(1 for m in msgs if isinstance(m, str)
                                                and _is_task_message(m))
        self._clis = clis
        now_ms = cli_state.now_ms()
        cooling: dict[str, int] = {}
        for c in clis:                   # the one cooldown rule (store/cli_state.describe)
            raw = until.get(c)           # (junk or a wrong-typed key: not cooling)
            in_force = isinstance(raw, str) and "cooldown_until" in cli_state.describe(
                c, {"cooldown_until": raw}, now_ms)
            cooling[c] = sum(1 for a in agents if a.get("cli") == c) if in_force else 0
        by_state: dict[str, int] = {}
        for st in self.scan.task_states.values():
            by_state[st] = by_state.get(st, 0) + 1
        if "name" in fields:
            agents.sort(key=lambda a: (a.get("name") or "", a.get("id") or ""))
        return {"agents": agents, "backlog": backlog, "missions_active": missions,
                "deadletter": dead, "deadlettered_total": dead_total,
                "redis_latency_s": latency, "cooldowns": cooling,
                "tasks_by_state": by_state,
                "running_task_ids": {t for t, s in self.scan.task_states.items() if s == "running"},
                "batch_ids": list(self.scan.batch_ids),
                "scan_age_s": None if self.scan.at is None
                else round(time.monotonic() - self.scan.at, 3),
                "read_ms": round((time.monotonic() - t0) * 1000, 2)}


MAX_BATCHES_SHOWN = 5
DONE_TASK_STATES = ("completed", "failed", "cancelled")


def missions(r: redis.Redis, keys, limit: int) -> list[dict]:
    """Active missions with progress: work items done/total, counts by status, blocked reasons."""
    from tinytownd.missions.storage import MissionStore

    st = MissionStore(r, keys)
    out = []
    for mid in sorted(st.active_ids())[:limit]:
        try:
            snap = st.load(mid)
        except Exception as e:            # an unreadable mission is the engine's to bury
            out.append({"id": mid, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        m = snap.mission
        by: dict[str, int] = {}
        for it in snap.items.values():
            by[it.status] = by.get(it.status, 0) + 1
        blocked = [{"id": it.id, "title": it.title[:120]} for it in snap.items.values()
                   if it.status == "blocked"][:10]
        out.append({"id": mid, "state": m.state if m else "unknown",
                    "blocked_reason": m.blocked_reason if m else None,
                    "done": by.get("done", 0), "total": len(snap.items), "by_status": by,
                    "blocked_items": blocked})
    return out


def batches(r: redis.Redis, keys, scan: KeyScan) -> list[dict]:
    """The newest batches of the town with their progress (task lists and states from the key
    scan: no per-request read of a batch's every task)."""
    batch_ids, task_states = scan.batch_ids, scan.task_states
    if not batch_ids:
        return []
    p = r.pipeline(transaction=False)
    for bid in batch_ids:
        p.hgetall(keys.batch(bid))
    metas = [(bid, m) for bid, m in zip(batch_ids, p.execute(raise_on_error=False))
             if isinstance(m, dict) and m]
    metas.sort(key=lambda x: x[1].get("created_at", ""), reverse=True)
    metas = metas[:MAX_BATCHES_SHOWN]
    out = []
    for bid, m in metas:
        by: dict[str, int] = {}
        for tid in scan.batch_tasks.get(bid, ()):
            s = task_states.get(tid, "unknown")
            by[s] = by.get(s, 0) + 1
        try:
            total = int(m.get("total") or 0)
        except ValueError:
            total = 0
        out.append({"id": bid, "state": m.get("state"), "kind": m.get("kind"),
                    "created_at": m.get("created_at"), "total": total or sum(by.values()),
                    "completed": by.get("completed", 0), "failed": by.get("failed", 0),
                    "by_state": by})
    return out
