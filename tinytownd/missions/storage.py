"""Mission storage: tt's keys and shapes exactly (F1), daemon bookkeeping under
tt:<town>:tinytownd:mission:… (never extension fields inside tt's JSON).

Reads are pipelined (one round trip per snapshot). Writes are *queued* on a caller's pipeline
(`q_*`), so the engine can put a whole tick into one fenced MULTI/EXEC. Operator operations
(`update_mission`) are compare-and-set loops with WATCH, so they never lose a concurrent write.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import redis

from tinytownd.store import events, records
from tinytownd.store.town import Town
from tinytownd.store.keys import Keys
from tinytownd.store.wire import SUPERVISOR_ID, utcnow
from tinytownd.missions.model import (CommandWatch, MissionControlMessage, MissionRun, WatchItem, WorkItem,
                    dumps)

EVENTS_MAX = 100
SUFFIXES = (":work", ":watch", ":events", ":control", ":dispatch_lock", ":active")
TASK_FIELDS = ("id", "state", "assigned_to", "tags", "updated_at", "result", "completed_at",
               "created_at")

def event_line(text: str, now: datetime | None = None) -> str:
    return f"[{(now or utcnow()).strftime('%Y-%m-%d %H:%M:%S')}] {text}"


@dataclass
class Snapshot:
    mission: MissionRun | None
    items: dict[str, WorkItem] = field(default_factory=dict)
    watches: dict[str, WatchItem] = field(default_factory=dict)
    cmd_watches: dict[str, CommandWatch] = field(default_factory=dict)
    controls: list[MissionControlMessage] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    task_ids: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)   # unreadable entries (tt skips them too)


def parse_task_fields(vals: list, tid: str) -> dict | None:
    if vals is None or vals[0] is None:
        return None
    d = {k: v for k, v in zip(TASK_FIELDS, vals) if v is not None}
    d["tags"] = records.decode_tags(d.get("tags"))
    st = d.get("state")
    d["state"] = "running" if st == "in_flight" else (st if st in (
        "pending", "assigned", "running", "completed", "failed", "cancelled") else "pending")
    return d


class MissionStore:
    def __init__(self, r: redis.Redis, keys: Keys, town: Town | None = None):
        self.r = r
        self.k = keys
        self.town = town or Town(r, keys)

    # ------------------------------------------------------------------ reads
    def get_mission(self, mid: str) -> MissionRun | None:
        raw = self.r.get(self.k.mission(mid))
        return MissionRun.from_json(raw) if raw else None

    def active_ids(self) -> set[str]:
        return set(self.r.smembers(self.k.missions_active))

    def list_mission_ids(self) -> list[str]:
        """All missions (SCAN, not KEYS; B13)."""
        pre = self.k.mission("")
        out = []
        for key in self.r.scan_iter(match=self.k.pattern("mission"), count=1000):
            rest = key[len(pre):]
            if any(s in key for s in SUFFIXES) or ":" in rest:
                continue
            out.append(rest)
        return sorted(out)

    def load_watches(self, mid: str) -> Snapshot:
        """Mission + watches only (what the engine needs before a tick, to run checks)."""
        k = self.k
        p = self.r.pipeline(transaction=False)
        p.get(k.mission(mid))
        p.hgetall(k.mission_watch(mid))
        p.hgetall(k.mission_cmd_watches(mid))
        raw_m, watch, cmdw = p.execute()
        snap = Snapshot(mission=MissionRun.from_json(raw_m) if raw_m else None)
        for cls, src, dst in ((WatchItem, watch, snap.watches),
                              (CommandWatch, cmdw, snap.cmd_watches)):
            for f, raw in src.items():
                try:
                    dst[f] = cls.from_json(raw)
                except (ValueError, KeyError, TypeError) as e:
                    snap.skipped.append(f"{cls.__name__} {f}: {e}")
        return snap

    def load(self, mid: str, client=None, cache: dict | None = None) -> Snapshot:
        """The whole mission. `cache` (wid -> (raw json, WorkItem)) skips re-parsing work items
        whose JSON did not change; the caller must keep it in step with what it writes."""
        k = self.k
        p = (client or self.r).pipeline(transaction=False)
        p.get(k.mission(mid))
        p.hgetall(k.mission_work(mid))
        p.hgetall(k.mission_watch(mid))
        p.hgetall(k.mission_cmd_watches(mid))
        p.hgetall(k.mission_control(mid))
        p.hgetall(k.mission_meta(mid))
        p.smembers(k.mission_tasks(mid))
        raw_m, work, watch, cmdw, ctrl, meta, tids = p.execute()
        snap = Snapshot(mission=MissionRun.from_json(raw_m) if raw_m else None, meta=meta,
                        task_ids=set(tids))
        if cache is not None:
            for f in [f for f in cache if f not in work]:
                del cache[f]
            todo = {}
            for f, raw in work.items():
                hit = cache.get(f)
                if hit is not None and hit[0] == raw:
                    snap.items[f] = hit[1]
                else:
                    todo[f] = raw
            work = todo
        for cls, src, dst in ((WorkItem, work, snap.items), (WatchItem, watch, snap.watches),
                              (CommandWatch, cmdw, snap.cmd_watches)):
            for f, raw in src.items():
                try:
                    dst[f] = cls.from_json(raw)
                    if cache is not None and cls is WorkItem:
                        cache[f] = (raw, dst[f])
                except (ValueError, KeyError, TypeError) as e:
                    snap.skipped.append(f"{cls.__name__} {f}: {e}")
        for f, raw in ctrl.items():
            try:
                c = MissionControlMessage.from_json(raw)
            except (ValueError, KeyError, TypeError) as e:
                snap.skipped.append(f"control {f}: {e}")
                continue
            snap.controls.append(c)
        return snap

    def load_tasks(self, tids, client=None) -> dict[str, dict]:
        tids = list(tids)
        if not tids:
            return {}
        p = (client or self.r).pipeline(transaction=False)
        for tid in tids:
            p.hmget(self.k.task(tid), TASK_FIELDS)
        out = {}
        for tid, vals in zip(tids, p.execute()):
            t = parse_task_fields(vals, tid)
            if t is not None:
                out[tid] = t
        return out

    def events(self, mid: str, n: int = 5) -> list[str]:
        return self.r.lrange(self.k.mission_log(mid), 0, n - 1)

    def lock_owner(self, mid: str) -> str | None:
        return self.r.get(self.k.mission_lock(mid))

    # ------------------------------------------------------------------ queued writes
    def q_log(self, p, mid: str, text: str, now: datetime | None = None) -> None:
        k = self.k
        p.lpush(k.mission_log(mid), event_line(text, now))
        p.ltrim(k.mission_log(mid), 0, EVENTS_MAX - 1)
        self.town.emit(events.mission_event(
            mid, text, timestamp=(now or utcnow()).isoformat().replace("+00:00", "Z")), pipe=p)

    def q_mission(self, p, m: MissionRun) -> None:
        p.set(self.k.mission(m.id), m.to_json())

    def q_item(self, p, it: WorkItem) -> None:
        p.hset(self.k.mission_work(it.mission_id), it.id, it.to_json())

    def q_watch(self, p, w: WatchItem) -> None:
        p.hset(self.k.mission_watch(w.mission_id), w.id, w.to_json())

    def q_cmd_watch(self, p, w: CommandWatch) -> None:
        p.hset(self.k.mission_cmd_watches(w.mission_id), w.id, w.to_json())

    def q_control(self, p, c: MissionControlMessage) -> None:
        p.hset(self.k.mission_control(c.mission_id), c.id, c.to_json())

    def q_cancel(self, p, tid: str, reason: str, mid: str | None = None) -> None:
        self.town.cancel_task(tid, reason, pipe=p, mission=mid)

    def q_help(self, p, question: str) -> None:
        self.town.send(SUPERVISOR_ID, "query", question=question, pipe=p)

    def q_wake(self, p, mid: str, why: str) -> None:
        p.publish(self.k.notify, dumps({"mission": mid, "event": why}))

    # ------------------------------------------------------------------ whole-mission writes
    def create(self, m: MissionRun, items: list[WorkItem], cmd_watches: list[CommandWatch],
               meta: dict[str, str], log: list[str]) -> None:
        """Write a whole mission in one MULTI/EXEC: nothing half-written (B14), SADD last."""
        k = self.k
        p = self.r.pipeline(transaction=True)
        self.q_mission(p, m)
        if items:
            p.hset(k.mission_work(m.id), mapping={it.id: it.to_json() for it in items})
        if cmd_watches:
            p.hset(k.mission_cmd_watches(m.id), mapping={w.id: w.to_json() for w in cmd_watches})
        if meta:
            p.hset(k.mission_meta(m.id), mapping=meta)
        for line in log:
            self.q_log(p, m.id, line)
        p.sadd(k.missions_active, m.id)
        self.q_wake(p, m.id, "started")
        p.execute()

    def update_mission(self, mid: str, fn: Callable[[MissionRun, object], object],
                       retries: int = 50):
        """Compare-and-set: WATCH the mission, re-read, apply `fn(mission, pipe)` (which mutates
        the mission and may queue extra writes on `pipe`, already in MULTI), SET, EXEC. Retried on
        conflict. Returns fn's result; LookupError if the mission does not exist."""
        k = self.k
        for _ in range(retries):
            with self.r.pipeline(transaction=True) as p:
                try:
                    p.watch(k.mission(mid))
                    raw = p.get(k.mission(mid))
                    if not raw:
                        raise LookupError(mid)
                    m = MissionRun.from_json(raw)
                    p.multi()
                    res = fn(m, p)
                    self.q_mission(p, m)
                    p.execute()
                    return res
                except redis.WatchError:
                    continue
        raise RuntimeError(f"mission {mid}: too many concurrent updates")

    def retire_help(self, mid: str) -> int:
        return int(self.town.scripts.retire_help(keys=[self.k.inbox(SUPERVISOR_ID)],
                                                 args=[f"[Mission Help Needed] Mission {mid}"]))

    def add_note(self, mid: str, body: str, sender: str = "conductor") -> MissionControlMessage:
        c = MissionControlMessage.new(mid, sender, body)

        def fn(m: MissionRun, p):
            m.clear_help_request_state()
            self.q_control(p, c)
            self.q_log(p, mid, f"Conductor note queued for dispatcher: {body}")
            self.q_wake(p, mid, "control")
        self.update_mission(mid, fn)
        return c

    def resolve_mission(self, ref: str) -> str:
        """Full id, or a unique prefix (≥ 4 chars) among all missions. LookupError otherwise."""
        r = ref.strip().lower()
        if self.r.exists(self.k.mission(r)):
            return r
        if len(r) >= 4:
            hits = [m for m in self.list_mission_ids() if m.startswith(r)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise LookupError(f"mission reference {ref!r} is ambiguous "
                                  f"({', '.join(h[:8] for h in hits)})")
        raise LookupError(f"unknown mission {ref!r}")

