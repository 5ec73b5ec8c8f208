"""Mission records in Redis: MissionStore reads and writes every mission key (the lease key,
tt's dispatch_lock, is store.leases').

tt's records keep tt's keys and shapes exactly; tinytownd's bookkeeping (counters, attempts,
descriptions, the bound-task index, command watches, the engine registry) lives under
tt:<town>:tinytownd:mission:… and never as extra fields inside tt's JSON. tt task, agent and
message records are written through `Town`.

Reads are pipelined (one round trip per snapshot). Writes are *queued* on a caller's pipeline
(`q_*`), so the engine can put a whole tick into one fenced MULTI/EXEC. Operator operations
(`update_mission`) are compare-and-set loops with WATCH, so they never lose a concurrent write.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

import redis

from tinytownd.store import events, quarantine, records
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town
from tinytownd.store.wire import is_uuid, SUPERVISOR_ID, TASK_TERMINAL, json_ts, utcnow

from .mission import HELP_MARKER, Mission, MissionControlMessage
from .watch import CommandWatch, WatchItem
from .work import WorkItem

EVENTS_MAX = 100
SUFFIXES = (":work", ":watch", ":events", ":control", ":dispatch_lock", ":active")
TASK_FIELDS = ("id", "state", "assigned_to", "tags", "updated_at", "result", "completed_at",
               "created_at")
WORKSPACE_FIELDS = ("branch", "base", "head")    # of the task's daemon meta (worktree mode)
SCAN_CHUNK = 500


def event_line(text: str, now: datetime | None = None) -> str:
    """A line of the mission's event list, as tt writes it."""
    return f"[{(now or utcnow()).strftime('%Y-%m-%d %H:%M:%S')}] {text}"


UNREADABLE = (ValueError, KeyError, TypeError, RecursionError)


class UnreadableMission(Exception):
    def __init__(self, mid: str, raw: str, reason: str):
        super().__init__(reason)
        self.mid, self.raw, self.reason = mid, raw, reason


@dataclass
class Snapshot:
    mission: Mission | None
    items: dict[str, WorkItem] = field(default_factory=dict)
    watches: dict[str, WatchItem] = field(default_factory=dict)
    cmd_watches: dict[str, CommandWatch] = field(default_factory=dict)
    controls: list[MissionControlMessage] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    task_ids: set[str] = field(default_factory=set)
    # unreadable entries (tt skips them; the next tick moves them to the dead-letter list):
    # (hash key, field, raw JSON, why)
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)


def parse_task_fields(vals: list) -> dict | None:
    """A bound task from HMGET TASK_FIELDS, with tt's reading of its state (None: no task)."""
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
        self.keys = keys
        self.town = town or Town(r, keys)

    # ------------------------------------------------------------------ reads
    def get_mission(self, mid: str) -> Mission | None:
        raw = self.r.get(self.keys.mission(mid))
        return Mission.from_json(raw) if raw else None

    def active_ids(self) -> set[str]:
        return set(self.r.smembers(self.keys.missions_active))

    def list_mission_ids(self) -> list[str]:
        """All missions (SCAN, not KEYS: a large town is not blocked)."""
        pre = self.keys.mission("")
        out = []
        for key in self.r.scan_iter(match=self.keys.pattern("mission"), count=1000):
            rest = key[len(pre):]
            if any(s in key for s in SUFFIXES) or ":" in rest:
                continue
            out.append(rest)
        return sorted(out)

    def tick_keys(self, mid: str) -> list[str]:
        """The keys a tick WATCHes: a write to any of them (an operator, tt) aborts its EXEC."""
        k = self.keys
        return [k.mission_lock(mid), k.mission(mid), k.mission_work(mid), k.mission_watch(mid),
                k.mission_cmd_watches(mid)]

    @staticmethod
    def _parse_into(cls, key: str, src: dict, dst: dict, snap: Snapshot) -> None:
        for f, raw in src.items():
            try:
                dst[f] = cls.from_json(raw)
            except UNREADABLE as e:
                snap.skipped.append((key, f, raw, f"unreadable {cls.__name__}: {e}"[:300]))

    def load_watches(self, mid: str) -> Snapshot:
        """Mission + watches only (what the engine needs before a tick, to run checks)."""
        k = self.keys
        p = self.r.pipeline(transaction=False)
        p.get(k.mission(mid))
        p.hgetall(k.mission_watch(mid))
        p.hgetall(k.mission_cmd_watches(mid))
        raw_m, watch, cmdw = p.execute()
        snap = Snapshot(mission=self._mission(mid, raw_m))
        self._parse_into(WatchItem, k.mission_watch(mid), watch, snap.watches, snap)
        self._parse_into(CommandWatch, k.mission_cmd_watches(mid), cmdw, snap.cmd_watches, snap)
        return snap

    @staticmethod
    def _mission(mid: str, raw: str | None) -> Mission | None:
        if not raw:
            return None
        try:
            return Mission.from_json(raw)
        except UNREADABLE as e:
            raise UnreadableMission(mid, raw, f"unreadable mission record: {e}"[:300]) from None

    def load(self, mid: str, cache: dict | None = None) -> Snapshot:
        """The whole mission. `cache` (wid -> (raw json, WorkItem)) skips re-parsing work items
        whose JSON did not change; the caller must keep it in step with what it writes."""
        k = self.keys
        p = self.r.pipeline(transaction=False)
        p.get(k.mission(mid))
        p.hgetall(k.mission_work(mid))
        p.hgetall(k.mission_watch(mid))
        p.hgetall(k.mission_cmd_watches(mid))
        p.hgetall(k.mission_control(mid))
        p.hgetall(k.mission_meta(mid))
        p.smembers(k.mission_tasks(mid))
        raw_m, work, watch, cmdw, ctrl, meta, tids = p.execute()
        snap = Snapshot(mission=self._mission(mid, raw_m), meta=meta, task_ids=set(tids))
        if cache is not None:
            for f in [f for f in cache if f not in work]:
                del cache[f]
            for f, raw in work.items():
                hit = cache.get(f)
                if hit is not None and hit[0] == raw:
                    snap.items[f] = hit[1]
                    continue
                try:
                    snap.items[f] = WorkItem.from_json(raw)
                    cache[f] = (raw, snap.items[f])
                except UNREADABLE as e:
                    snap.skipped.append((k.mission_work(mid), f, raw,
                                         f"unreadable WorkItem: {e}"[:300]))
        else:
            self._parse_into(WorkItem, k.mission_work(mid), work, snap.items, snap)
        self._parse_into(WatchItem, k.mission_watch(mid), watch, snap.watches, snap)
        self._parse_into(CommandWatch, k.mission_cmd_watches(mid), cmdw, snap.cmd_watches, snap)
        controls: dict = {}
        self._parse_into(MissionControlMessage, k.mission_control(mid), ctrl, controls, snap)
        snap.controls.extend(controls.values())
        return snap

    def q_bury(self, p, key: str, field: str, raw: str, reason: str) -> None:
        """Queue an unreadable hash entry's move to the dead-letter list (in the tick's MULTI)."""
        self.town.deadletter(reason, key, raw, pipe=p, field=field)
        p.hdel(key, field)

    def bury_mission(self, e: "UnreadableMission") -> None:
        """A mission record nobody can read: to the dead-letter list, out of the active set."""
        p = self.r.pipeline(transaction=True)
        self.town.deadletter(e.reason, self.keys.mission(e.mid), e.raw, pipe=p)
        p.srem(self.keys.missions_active, e.mid)
        p.execute()

    def expected_types(self, mid: str) -> dict[str, str]:
        """The Redis type of every key of a mission (for quarantine of wrong-typed ones)."""
        k = self.keys
        return {k.mission(mid): "string", k.mission_work(mid): "hash",
                k.mission_watch(mid): "hash", k.mission_cmd_watches(mid): "hash",
                k.mission_control(mid): "hash", k.mission_meta(mid): "hash",
                k.mission_tasks(mid): "set", k.mission_lock(mid): "string",
                k.mission_log(mid): "list", k.missions_active: "set"}

    def load_tasks(self, tids) -> dict[str, dict]:
        tids = list(tids)
        if not tids:
            return {}
        p = self.r.pipeline(transaction=False)
        for tid in tids:
            p.hmget(self.keys.task(tid), TASK_FIELDS)
            p.hmget(self.keys.task_meta(tid), WORKSPACE_FIELDS)
        res = p.execute()
        out = {}
        for i, tid in enumerate(tids):
            t = parse_task_fields(res[2 * i])
            if t is not None:
                branch, base, head = res[2 * i + 1]
                if branch and head and head != base:    # worktree mode: a branch with commits
                    t["branch"] = branch
                out[tid] = t
        return out

    def live_tasks_tagged(self, mids: list[str]) -> dict[str, list[str]]:
        """mid -> ids of the live tasks in the town tagged `mission:<mid>` (one SCAN for all)."""
        want = {f"mission:{m}": m for m in mids}
        keys = list(self.r.scan_iter(match=self.keys.pattern("task"), count=1000))
        found: dict[str, list[str]] = {}
        for i in range(0, len(keys), SCAN_CHUNK):
            p = self.r.pipeline(transaction=False)
            for key in keys[i:i + SCAN_CHUNK]:
                p.hmget(key, "id", "state", "tags")
            for vals in p.execute(raise_on_error=False):
                if not isinstance(vals, list) or not vals[0] or vals[1] in TASK_TERMINAL:
                    continue
                for t in records.decode_tags(vals[2]):
                    if t in want:
                        found.setdefault(want[t], []).append(vals[0])
                        break
        return found

    def recent_log(self, mid: str, n: int = 5) -> list[str]:
        return self.r.lrange(self.keys.mission_log(mid), 0, n - 1)

    def lock_owner(self, mid: str, client=None) -> str | None:
        return (client or self.r).get(self.keys.mission_lock(mid))

    # ------------------------------------------------------------------ queued writes
    def q_log(self, p, mid: str, text: str, now: datetime | None = None) -> None:
        k = self.keys
        p.lpush(k.mission_log(mid), event_line(text, now))
        p.ltrim(k.mission_log(mid), 0, EVENTS_MAX - 1)
        self.town.emit(events.mission_event(mid, text, timestamp=json_ts(now or utcnow())),
                       pipe=p)

    def q_mission(self, p, m: Mission) -> None:
        p.set(self.keys.mission(m.id), m.to_json())

    def q_item(self, p, it: WorkItem) -> str:
        """Returns the JSON written (for the engine's parse cache)."""
        raw = it.to_json()
        p.hset(self.keys.mission_work(it.mission_id), it.id, raw)
        return raw

    def q_watch(self, p, w: WatchItem) -> None:
        p.hset(self.keys.mission_watch(w.mission_id), w.id, w.to_json())

    def q_cmd_watch(self, p, w: CommandWatch) -> None:
        p.hset(self.keys.mission_cmd_watches(w.mission_id), w.id, w.to_json())

    def q_control(self, p, c: MissionControlMessage) -> None:
        p.hset(self.keys.mission_control(c.mission_id), c.id, c.to_json())

    def q_meta(self, p, mid: str, set_: dict[str, str], delete: Iterable[str] = ()) -> None:
        if set_:
            p.hset(self.keys.mission_meta(mid), mapping=set_)
        delete = list(delete)
        if delete:
            p.hdel(self.keys.mission_meta(mid), *delete)

    def q_bind_tasks(self, p, mid: str, tids: Iterable[str]) -> None:
        """Add tasks to the mission's bound-task index (the tasks its ticks read)."""
        tids = list(tids)
        if tids:
            p.sadd(self.keys.mission_tasks(mid), *tids)

    def q_unbind_tasks(self, p, mid: str, tids: Iterable[str]) -> None:
        tids = list(tids)
        if tids:
            p.srem(self.keys.mission_tasks(mid), *tids)

    def q_active(self, p, mid: str, active: bool) -> None:
        """In or out of the set of missions the dispatchers drive."""
        if active:
            p.sadd(self.keys.missions_active, mid)
        else:
            p.srem(self.keys.missions_active, mid)

    def q_cancel(self, p, tid: str, reason: str, mid: str | None = None) -> None:
        self.town.cancel_task(tid, reason, pipe=p, mission=mid)

    def q_help(self, p, question: str) -> None:
        self.town.send(SUPERVISOR_ID, "query", question=question, pipe=p)

    def q_wake(self, p, mid: str, why: str) -> None:
        p.publish(self.keys.notify, records.dumps({"mission": mid, "event": why}))

    # ------------------------------------------------------------------ direct writes
    def bind_tasks(self, found: dict[str, list[str]]) -> None:
        """Add tasks to the bound-task index of each mission (mid -> task ids)."""
        if not found:
            return
        p = self.r.pipeline(transaction=False)
        for mid, tids in found.items():
            self.q_bind_tasks(p, mid, tids)
        p.execute()

    def bump_fence(self, mid: str) -> None:
        """A new holder of the mission's lease bumps its fence counter."""
        self.town.scripts.counter(keys=[self.keys.mission_meta(mid)], args=["fence", 1])

    def engine_heartbeat(self, token: str, stale_after_s: float) -> tuple[int, set[str]]:
        """Register engine `token` as alive now and forget engines silent for `stale_after_s`.
        Returns (live engines, active mission ids)."""
        now_ms = int(time.time() * 1000)
        k = self.keys
        p = self.r.pipeline(transaction=False)
        p.zadd(k.mission_engines, {token: now_ms})
        p.zremrangebyscore(k.mission_engines, 0, now_ms - int(stale_after_s * 1000))
        p.zcard(k.mission_engines)
        p.smembers(k.missions_active)
        _, _, engines, active = p.execute()
        bad = [m for m in active if not is_uuid(m) or not records.utf8_clean(m)]
        if bad:     # a member that is not a mission id would fail every key built from it
            p = self.r.pipeline(transaction=True)
            for m in bad:
                self.town.deadletter("active-set member is not a mission id",
                                     k.missions_active, m, pipe=p)
                p.srem(k.missions_active, records.to_bytes(m))
            p.execute()
            active = active - set(bad)
        return engines, active

    def engine_keys(self) -> dict[str, str]:
        """The keys every engine reads, with their Redis type (quarantine)."""
        k = self.keys
        return {k.missions_active: "set", k.mission_engines: "zset", k.deadletter: "list"}

    def engine_leave(self, token: str) -> None:
        self.r.zrem(self.keys.mission_engines, token)

    # ------------------------------------------------------------------ whole-mission writes
    def create(self, m: Mission, items: list[WorkItem], cmd_watches: list[CommandWatch],
               meta: dict[str, str], log: list[str]) -> None:
        """Write a whole mission in one MULTI/EXEC, so nothing is ever half-written; it joins the
        active set last."""
        k = self.keys
        for tries_left in (1, 0):
            p = self.r.pipeline(transaction=True)
            self.q_mission(p, m)
            if items:
                p.hset(k.mission_work(m.id), mapping={it.id: it.to_json() for it in items})
            if cmd_watches:
                p.hset(k.mission_cmd_watches(m.id),
                       mapping={w.id: w.to_json() for w in cmd_watches})
            self.q_meta(p, m.id, meta)
            for line in log:
                self.q_log(p, m.id, line)
            self.q_active(p, m.id, True)
            self.q_wake(p, m.id, "started")
            try:
                p.execute()
                return
            except redis.ResponseError as e:
                # a shared key of the wrong type (the active set, a stream): moved away, then
                # written once more (also when another reader moved it away first)
                if not (tries_left and quarantine.is_wrongtype(e)):
                    raise
                quarantine.quarantine(self.town, {**self.engine_keys(),
                                                  **self.expected_types(m.id),
                                                  k.events: "stream",
                                                  k.mission_events_stream(m.id): "stream"})

    def update_mission(self, mid: str, fn: Callable[[Mission, object], object],
                       retries: int = 50):
        """Compare-and-set: WATCH the mission, re-read, apply `fn(mission, pipe)` (which mutates
        the mission and may queue extra writes on `pipe`, already in MULTI), SET, EXEC. Retried on
        conflict. Returns fn's result; LookupError if the mission does not exist."""
        k = self.keys
        for _ in range(retries):
            with self.r.pipeline(transaction=True) as p:
                try:
                    p.watch(k.mission(mid))
                    raw = p.get(k.mission(mid))
                    if not raw:
                        raise LookupError(mid)
                    m = Mission.from_json(raw)
                    p.multi()
                    res = fn(m, p)
                    self.q_mission(p, m)
                    p.execute()
                    return res
                except redis.WatchError:
                    continue
        raise RuntimeError(f"mission {mid}: too many concurrent updates")

    def retire_help(self, mid: str) -> int:
        """Remove the conductor's pending help queries about the mission; returns how many."""
        return int(self.town.scripts.retire_help(keys=[self.keys.inbox(SUPERVISOR_ID)],
                                                 args=[HELP_MARKER.format(mid=mid)]))

    def add_note(self, mid: str, body: str, sender: str = "conductor") -> MissionControlMessage:
        c = MissionControlMessage.new(mid, sender, body)

        def fn(m: Mission, p):
            m.clear_help_request_state()
            self.q_control(p, c)
            self.q_log(p, mid, f"Conductor note queued for dispatcher: {body}")
            self.q_wake(p, mid, "control")
        self.update_mission(mid, fn)
        return c

    def resolve_mission(self, ref: str) -> str:
        """Full id, or a unique prefix (≥ 4 chars) among all missions. LookupError otherwise."""
        r = ref.strip().lower()
        if self.r.exists(self.keys.mission(r)):
            return r
        if len(r) >= 4:
            hits = [m for m in self.list_mission_ids() if m.startswith(r)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise LookupError(f"mission reference {ref!r} is ambiguous "
                                  f"({', '.join(h[:8] for h in hits)})")
        raise LookupError(f"unknown mission {ref!r}")
