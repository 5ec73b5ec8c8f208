"""Poison input: hostile values (hypothesis-generated plus hand-picked) in every kind of key the
daemon reads (store/keys.py), written as raw bytes with a decode_responses=False client.

For each example: inject, then submit normal work and check
  * the daemon stays up, no supervised service restarts and no agent worker crash-restarts;
  * the normal work completes ("moved on"): a task assigned to the agent whose keys were poisoned
    (the queue it was in must move on), a backlog task, and for mission and notify kinds a fresh
    one-item mission; retry kinds use a task that fails its first attempt;
  * the bad input is dead-lettered with a reason and its source (kinds that carry work: messages,
    backlog entries, retry envelopes, tasks), or refused: for state records (agent, lease, stop
    flag, mission records, wrong types of write targets) the daemon tolerates it without a crash
    and the work moves on.
One daemon per class is reused across examples; after an example that crashed something or did
not move on, the poison is removed and the daemon restarted, so the next example starts clean.
A kind stops generating after its first failures (1 quick, 3 full): one is enough to show it.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import strategies as S
from .classes import fault
from . import harness
from .harness import Site, Trial, tt, wait_until

from tinytownd.store import records

MISSION = """objective: poison probe
policy: {max_parallel_items: 1, reviewer_required: false, max_attempts: 1}
work_items:
  - {id: a, title: A, description: "mission item"}
"""


@dataclass
class Kind:
    name: str
    values: Callable[["Poisoner"], st.SearchStrategy]   # generated values
    inject: Callable[["Poisoner", Any], Any]            # → undo token
    undo: Callable[["Poisoner", Any], None]
    explicit: Callable[["Poisoner"], list] = lambda p: []
    deadletter: bool = False          # the input carries work: it must be dead-lettered
    is_bad: Callable[[Any], bool] = lambda v: True
    probes: tuple = ("victim", "backlog")
    accounted: Callable | None = None  # (p, value, token, new dead letters) -> bool
    after: Callable | None = None      # run after the inject (e.g. reload)
    failures: int = 0
    examples: int = 0


class Poisoner:
    def __init__(self, trial: Trial, name: str, *, missions: bool = False):
        self.trial = trial
        self.res = trial.result
        self.quick = trial.quick
        self.site: Site = trial.site(name, agents=3, sleep=0.05)
        self.site.start()
        self.k = self.site.keys
        self.raw = self.site.client(decode=False)
        self.victim = self.site.aid("w-1")
        self.all_tids: list[str] = []
        self.mission_file = trial.dir / "mission.yaml"
        self.mission_file.write_text(MISSION)
        self.missions = missions
        self.probe_s = trial.pick(4.0, 8.0)
        self.fail_limit = trial.pick(1, 3)

    # --- markers ------------------------------------------------------------------------
    def marker(self) -> dict:
        st_ = self.site.status()
        restarts = sum(int(d.get("restarts") or 0) for d in
                       ((st_ or {}).get("service_details") or {}).values())
        crashes, _ = self.site.log_findings()
        try:
            dl = self.raw.llen(self.k.deadletter)
        except redis.RedisError:
            dl = 0
        return {"pid": self.site.daemon_pid(), "restarts": restarts, "workers": crashes,
                "dl": dl, "status": st_ is not None,
                "services": {n: d.get("last_error") for n, d in
                             ((st_ or {}).get("service_details") or {}).items()}}

    def new_deadletters(self, since: int) -> list[dict]:
        try:
            raw = self.raw.lrange(self.k.deadletter, since, -1)
        except redis.RedisError:
            return []
        out = []
        for b in raw:     # leniently: an entry holding invalid UTF-8 still counts as one
            try:
                out.append(json.loads(b.decode("utf-8", "replace")))
            except ValueError:
                out.append({"unparsable": True})
        return out

    # --- probes -------------------------------------------------------------------------
    def new_mission(self) -> str:
        from tinytownd.missions import compile as mc
        from tinytownd.missions.storage import MissionStore
        c = mc.compile_file(str(self.mission_file), roles={"worker"})
        MissionStore(self.site.r, self.k).create(c.mission, c.items, c.cmd_watches, c.meta,
                                                 c.log)
        return c.mission.id

    def mission_state(self, mid: str) -> str | None:
        try:
            raw = self.site.r.get(self.k.mission(mid))
            return json.loads(raw).get("state") if raw else None
        except (redis.RedisError, ValueError, AttributeError):
            return None

    def probe(self, kind: Kind) -> tuple[bool, list[str]]:
        town = self.site.town
        tids, mids, why = [], [], []
        try:
            if "victim" in kind.probes:
                tids.append(town.assign(self.victim, f"probe ({kind.name}) for the poisoned agent"))
            if "retry" in kind.probes:
                tids.append(town.assign(self.victim, f"probe ({kind.name}) FAILONCE-{uuid.uuid4()}"))
            if "backlog" in kind.probes:
                tids.append(town.backlog_add(f"backlog probe ({kind.name})"))
            if "mission" in kind.probes:
                mids.append(self.new_mission())
        except redis.RedisError as e:
            why.append(f"probe submission refused: {e}")
        self.res.submitted += len(tids)
        self.all_tids += tids
        ok = self.site.wait_terminal(tids, self.probe_s) if tids else True
        if not ok:
            why.append(f"probe tasks not terminal after {self.probe_s:g}s: "
                       f"{self.site.states(tids)}")
        for mid in mids:
            done = wait_until(lambda: self.mission_state(mid) == "completed", self.probe_s, 0.1)
            if not done:
                ok = False
                why.append(f"probe mission {mid[:8]} is {self.mission_state(mid)!r} after "
                           f"{self.probe_s:g}s")
        return ok and not why, why

    # --- one example ----------------------------------------------------------------------
    def example(self, kind: Kind, value) -> None:
        if kind.failures >= self.fail_limit or self.trial.budget.left() < 25:
            return
        kind.examples += 1
        bad = kind.is_bad(value)
        if bad:
            self.res.bad_inputs += 1
        m0 = self.marker()
        token = None
        why = []
        try:
            token = kind.inject(self, value)
        except redis.RedisError as e:   # Redis itself refused the value (e.g. too big): refused
            why.append(f"inject refused by redis: {e}")
        if kind.after is not None:
            try:
                kind.after(self)
            except Exception as e:
                why.append(f"after-inject step failed: {e}")
        time.sleep(0.2)
        moved, pwhy = self.probe(kind)
        m1 = self.marker()
        crashed = []
        if m1["pid"] != m0["pid"] or not m1["pid"]:
            crashed.append("the daemon exited")
        if not m1["status"]:
            crashed.append("status unanswered")
        if m1["restarts"] > m0["restarts"]:
            errs = {n: e for n, e in m1["services"].items() if e and e != m0["services"].get(n)}
            crashed.append(f"service restarts {m0['restarts']}->{m1['restarts']} {errs}")
        if m1["workers"] > m0["workers"]:
            crashed.append(f"agent worker crash-restarts {m0['workers']}->{m1['workers']}")
        dls = self.new_deadletters(m0["dl"])
        if kind.accounted is not None:
            accounted = kind.accounted(self, value, token, dls)
        elif kind.deadletter and bad:
            accounted = any(d.get("reason") and d.get("source") for d in dls)
        else:
            accounted = True
        ok = moved and not crashed and (accounted or not bad)
        if ok:
            if bad:
                self.res.bad_handled += 1
        else:
            kind.failures += 1
            parts = crashed + pwhy + why
            if bad and not accounted:
                parts.append("not dead-lettered with a reason" if kind.deadletter else
                             "not refused (no terminal state / dead letter / removal)")
            self.res.note(f"{kind.name}: {describe(value)} -> " + "; ".join(parts))
        try:
            kind.undo(self, token)
        except redis.RedisError as e:
            self.res.note(f"{kind.name}: undo failed: {e}")
        if not ok:
            self.reset()

    def reset(self) -> None:
        """Restart the daemon (the poison is gone): the next example starts clean."""
        self.site.stop()
        self.site.start()
        self.raw = self.site.client(decode=False)
        self.site._r = None

    def run(self, kind: Kind) -> None:
        for v in kind.explicit(self):
            self.example(kind, v)
        n = self.trial.pick(2, 12)

        @settings(max_examples=n, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(kind.values(self))
        def gen(v):
            self.example(kind, v)
        gen()

    def finish(self) -> None:
        self.site.wait_terminal(self.all_tids, trial_left(self.trial, 15))
        self.site.measure(self.all_tids)
        # what was dead-lettered must stay readable by the operator
        r = tt("deadletter", "list", "--json", "-c", self.site.d.cfg_path, timeout=30)
        self.res.check(r.returncode == 0 and not harness.has_traceback(r.stderr),
                       f"`tinytownd deadletter list` reads the dead letters (exit {r.returncode}:"
                       f" {r.stderr.decode(errors='replace').strip()[-200:]!r})")
        per = {k.name: f"{k.examples - k.failures}/{k.examples}" for k in self.kinds}
        self.res.note(f"examples ok per kind: {per}")


def trial_left(trial: Trial, cap: float) -> float:
    return max(1.0, min(cap, trial.budget.left() - 10))


def describe(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(describe(x) for x in v) + ")"
    if isinstance(v, (bytes, bytearray)):
        if len(v) > 60:
            return f"<{len(v)} bytes {bytes(v[:24])!r}…>"
        return repr(bytes(v))
    if isinstance(v, dict):
        return "{" + ", ".join(f"{describe(a)}: {describe(b)}" for a, b in list(v.items())[:4]) + "}"
    if isinstance(v, list):
        return f"[{len(v)} items: {describe(v[0]) if v else ''}…]"
    return repr(v)[:80]


def message_is_bad(v) -> bool:
    try:
        records.decode_message(v)
        return False
    except Exception:
        return True


def dump_restore(p: Poisoner, key: str):
    return key, p.raw.dump(key)


def restore(p: Poisoner, token) -> None:
    key, blob = token
    if blob is None:
        p.raw.delete(key)
    else:
        p.raw.restore(key, 0, blob, replace=True)


# ============================================================================= queues
def _queue_kind(name: str, keyfn, push: str) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        (p.raw.lpush if push == "l" else p.raw.rpush)(key, v)
        return v

    def undo(p: Poisoner, v):
        if v is None:
            return
        a = p.victim
        for key in (p.k.inbox(a), p.k.urgent(a), p.k.inflight(a), p.k.inflight_urgent(a)):
            try:
                p.raw.lrem(key, 0, v)
            except redis.RedisError:
                pass

    def explicit(p: Poisoner):
        tid = str(uuid.uuid4())
        return [b"\xff\xfe not utf-8", S._deep(100_000, "list"), b"", b"x" * (4 << 20),
                json.dumps({"id": str(uuid.uuid4()), "from": "00000000-0000-0000-0000-000000000001",
                            "to": p.victim, "type": "task_assign", "task_id": 12345,
                            "priority": "normal", "created_at": "2024-01-01T00:00:00Z"}).encode(),
                records.task_assign_json(p.victim, tid).replace('Z"', '"').encode()]
    return Kind(name, lambda p: S.hostile_message(p.victim), inject, undo, explicit,
                deadletter=True, is_bad=message_is_bad)


def _type_kind(name: str, keyfn, correct: str, probes=("backlog",), after=None) -> Kind:
    def inject(p: Poisoner, t):
        key = keyfn(p)
        tok = dump_restore(p, key)
        S.write_type(p.raw, key, t)
        return tok
    return Kind(name, lambda p: S.wrong_type().filter(lambda t: t != correct), inject, restore,
                probes=probes, after=after)


QUEUE_KINDS = [
    _queue_kind("inbox", lambda p: p.k.inbox(p.victim), "r"),
    _queue_kind("urgent", lambda p: p.k.urgent(p.victim), "l"),
    _queue_kind("inflight", lambda p: p.k.inflight(p.victim), "r"),
    _queue_kind("inflight_urgent", lambda p: p.k.inflight_urgent(p.victim), "r"),
    _type_kind("inbox-wrong-type", lambda p: p.k.inbox(p.victim), "list"),
    _type_kind("urgent-wrong-type", lambda p: p.k.urgent(p.victim), "list"),
]


# ============================================================================= backlog
def _backlog_inject(p: Poisoner, v):
    vals = v if isinstance(v, list) else [v]
    p.raw.rpush(p.k.backlog, *vals)
    return vals


def _backlog_undo(p: Poisoner, vals):
    for v in vals or ():
        try:
            p.raw.lrem(p.k.backlog, 0, v)
        except redis.RedisError:
            pass


def _backlog_accounted(p: Poisoner, v, vals, dls) -> bool:
    """Dead-lettered, or taken off the backlog."""
    if any(d.get("source") == p.k.backlog and d.get("reason") for d in dls):
        return True
    try:
        left = set(p.raw.lrange(p.k.backlog, 0, -1))
    except redis.RedisError:
        return False
    return not any(x in left for x in (vals or ()))


def _backlog_values(p: Poisoner):
    return st.one_of(S.hostile_bytes(), st.just(str(uuid.uuid4()).encode()),
                     st.builds(lambda: _wrong_typed_task(p)))


def _wrong_typed_task(p: Poisoner) -> bytes:
    tid = str(uuid.uuid4())
    p.raw.set(p.k.task(tid), b"not a hash")
    return tid.encode()


BACKLOG_KINDS = [
    Kind("backlog-entry", _backlog_values, _backlog_inject, _backlog_undo,
         explicit=lambda p: [[f"ghost-{i}".encode() for i in range(150)], b"\xff\xfe", b"",
                             str(uuid.uuid4()).encode(), _wrong_typed_task(p)],
         probes=("backlog",), accounted=_backlog_accounted),
    _type_kind("backlog-wrong-type", lambda p: p.k.backlog, "list", probes=("victim",)),
]


# ============================================================================= tasks
def _task_with(p: Poisoner, *, task=None, task_type=None, meta=None, meta_type=None):
    """A task for the victim whose hash / meta is hostile, and its task_assign message."""
    tid = str(uuid.uuid4())
    k, a = p.k, p.victim
    tkey, mkey = k.task(tid), k.task_meta(tid)
    good = records.new_task_hash(tid, "poisoned task", state="assigned", assigned_to=a)
    pipe = p.raw.pipeline(transaction=True)
    pipe.hset(tkey, mapping=good)
    pipe.hset(mkey, mapping={"agent": a})
    pipe.execute()
    if task is not None:
        p.raw.hset(tkey, mapping=task)
    if task_type is not None:
        S.write_type(p.raw, tkey, task_type)
    if meta is not None:
        p.raw.hset(mkey, mapping=meta)
    if meta_type is not None:
        S.write_type(p.raw, mkey, meta_type)
    msg = records.task_assign_json(a, tid).encode()
    p.raw.rpush(k.inbox(a), msg)
    return tid, msg


def _task_undo(p: Poisoner, tok):
    if not tok:
        return
    tid, msg = tok
    p.raw.delete(p.k.task(tid), p.k.task_meta(tid))
    a = p.victim
    for key in (p.k.inbox(a), p.k.inflight(a)):
        p.raw.lrem(key, 0, msg)


def _task_accounted(p: Poisoner, v, tok, dls) -> bool:
    """The task reached a terminal state, or its message was dead-lettered with a reason."""
    if not tok:
        return False
    tid, _msg = tok
    if any(d.get("reason") and (d.get("task") == tid or tid in str(d.get("raw", "")))
           for d in dls):
        return True
    wait_until(lambda: _tstate(p, tid) in ("completed", "failed", "cancelled"), 2.0)
    return _tstate(p, tid) in ("completed", "failed", "cancelled")


def _tstate(p: Poisoner, tid: str):
    try:
        return p.raw.hget(p.k.task(tid), "state").decode("utf-8", "replace")
    except (redis.RedisError, AttributeError):
        return None


TASK_FIELDS = ("id", "description", "state", "tags", "assigned_to", "created_at", "updated_at",
               "started_at", "result", "parent_id")
META_FIELDS = ("attempts", "max_attempts", "timeout_s", "last_error", "agent", "batch",
               "mission", "work_item")

TASK_KINDS = [
    Kind("task-hash-fields", lambda p: S.hostile_hash_fields(TASK_FIELDS),
         lambda p, v: _task_with(p, task=v), _task_undo,
         explicit=lambda p: [{b"state": b"\xff"}, {b"tags": S._deep(100_000, "list")},
                             {b"description": b"\xff\xfe" * 10},
                             {b"assigned_to": b"x" * (1 << 20)}],
         accounted=_task_accounted),
    Kind("task-hash-wrong-type", lambda p: S.wrong_type().filter(lambda t: t != "hash"),
         lambda p, t: _task_with(p, task_type=t), _task_undo, accounted=_task_accounted),
    Kind("task-meta-fields", lambda p: S.hostile_hash_fields(META_FIELDS),
         lambda p, v: _task_with(p, meta=v), _task_undo,
         explicit=lambda p: [{b"attempts": b"abc"}, {b"max_attempts": b"1e999"},
                             {b"timeout_s": b"nan"}, {b"timeout_s": b"-1"},
                             {b"max_attempts": b"99999999999999999999999"}],
         accounted=_task_accounted),
    Kind("task-meta-wrong-type", lambda p: S.wrong_type().filter(lambda t: t != "hash"),
         lambda p, t: _task_with(p, meta_type=t), _task_undo, accounted=_task_accounted),
]


# ============================================================================= agents
AGENT_FIELDS = ("state", "name", "role_id", "current_task", "last_heartbeat", "rounds_completed",
                "tasks_completed", "last_active_at", "cli", "nickname", "id", "created_at")
INFO_FIELDS = ("owner", "pid", "round", "round_started_at", "last_exit", "cli", "task",
               "started_at")


def _hash_fields_kind(name: str, keyfn, fields, explicit=None) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        tok = dump_restore(p, key)
        p.raw.hset(key, mapping=v)
        return tok
    return Kind(name, lambda p: S.hostile_hash_fields(fields), inject, restore,
                explicit=explicit or (lambda p: []))


def _reload(p: Poisoner) -> None:
    r = tt("reload", "-c", p.site.d.cfg_path, timeout=30)
    if r.returncode not in (0,):
        raise RuntimeError(f"reload exit {r.returncode}: {r.stderr.decode(errors='replace')[-200:]}")


def _set_kind(name: str, keyfn, probes=("victim", "backlog"), explicit=None, after=None,
              accounted=None) -> Kind:
    def inject(p: Poisoner, v):
        key = keyfn(p)
        tok = dump_restore(p, key)
        p.raw.set(key, v)
        return tok
    return Kind(name, lambda p: S.hostile_bytes(), inject, restore, probes=probes,
                explicit=explicit or (lambda p: []), after=after, accounted=accounted)


def _stop_undo(p: Poisoner, tok) -> None:
    restore(p, tok)
    tt("resume", "w-1", "-c", p.site.d.cfg_path, timeout=20)
    wait_until(lambda: p.site.wait_agents(0.5), 10)


def _stop_accounted(p: Poisoner, v, tok, dls) -> bool:
    """A stop flag (any value) stops the agent cleanly: that is its meaning."""
    st_ = wait_until(lambda: p.raw.hget(p.k.agent(p.victim), "state") == b"stopped", 5)
    return bool(st_)


AGENT_KINDS = [
    _hash_fields_kind("agent-hash-fields", lambda p: p.k.agent(p.victim), AGENT_FIELDS,
                      explicit=lambda p: [{b"rounds_completed": b"abc"},
                                          {b"tasks_completed": b"1e999"},
                                          {b"state": b"\xff"}, {b"last_heartbeat": b"yesterday"},
                                          {b"current_task": b"\xff" * 40}]),
    _type_kind("agent-hash-wrong-type", lambda p: p.k.agent(p.victim), "hash",
               probes=("victim", "backlog")),
    _hash_fields_kind("agent-info-fields", lambda p: p.k.agent_info(p.victim), INFO_FIELDS),
    _type_kind("agent-info-wrong-type", lambda p: p.k.agent_info(p.victim), "hash",
               probes=("victim", "backlog")),
    Kind("agent-names-fields",
         lambda p: st.one_of(S.hostile_hash_fields(("w-1", "w-2", "x")),
                             st.just({b"w-1": str(uuid.uuid4()).encode()})),
         lambda p, v: (lambda tok: (p.raw.hset(p.k.agent_names, mapping=v), tok)[1])(
             dump_restore(p, p.k.agent_names)), restore,
         probes=("victim", "backlog", "mission"), after=_reload),
    _type_kind("agent-names-wrong-type", lambda p: p.k.agent_names, "hash",
               probes=("victim", "backlog", "mission"), after=_reload),
    _set_kind("lease-value", lambda p: p.k.agent_lease(p.victim),
              explicit=lambda p: [b"another-daemon somehost 1", b""]),
    _type_kind("lease-wrong-type", lambda p: p.k.agent_lease(p.victim), "string",
               probes=("victim", "backlog")),
    _set_kind("stop-flag", lambda p: p.k.stop(p.victim), probes=("backlog",),
              accounted=_stop_accounted),
]
AGENT_KINDS[-1].undo = _stop_undo
AGENT_KINDS.append(Kind("stop-flag-wrong-type", lambda p: S.wrong_type(),
                        lambda p, t: (lambda tok: (S.write_type(p.raw, p.k.stop(p.victim), t),
                                                   tok)[1])(dump_restore(p, p.k.stop(p.victim))),
                        _stop_undo, probes=("backlog",), accounted=_stop_accounted))


# ============================================================================= delayed
def _envelope(p: Poisoner):
    a = p.victim
    keys = st.sampled_from([p.k.inbox(a), p.k.task(str(uuid.uuid4())), "ballast-foreign-key",
                            "tt:other-town:inbox:x", p.k.deadletter, ""])
    env = st.fixed_dictionaries({"key": st.one_of(keys, S.json_value()),
                                 "raw": st.one_of(S.json_value(), st.just("x"))},
                                optional={"head": S.json_value(), "id": S.json_value()})
    return st.one_of(S.hostile_bytes(), env.map(S.dumps))


def _delayed_inject(p: Poisoner, v):
    if v.startswith(b'{"key": "tt:ft:task:'):   # make the target a real hash (WRONGTYPE)
        key = json.loads(v)["key"]
        p.raw.hset(key, "id", "x")
    p.raw.zadd(p.k.delayed, {v: int(time.time() * 1000) - 1000})
    return v


def _delayed_undo(p: Poisoner, v):
    if v is not None:
        p.raw.zrem(p.k.delayed, v)
    p.raw.delete("ballast-foreign-key", "tt:other-town:inbox:x")


def _delayed_accounted(p: Poisoner, v, tok, dls) -> bool:
    """Dead-lettered with its source, or delivered to a queue of this town."""
    if any(d.get("reason") and d.get("source") == p.k.delayed for d in dls):
        return True
    try:
        env = json.loads(v)
        key = env.get("key") if isinstance(env, dict) else None
    except ValueError:
        key = None
    try:
        still = p.raw.zscore(p.k.delayed, v) is not None
    except redis.RedisError:
        still = True
    if still:
        return False
    if key in ("ballast-foreign-key", "tt:other-town:inbox:x"):
        p.res.note(f"delayed envelope delivered to a key outside the town's queues: {key}")
        return False
    return isinstance(key, str) and key.startswith(f"tt:{p.k.town}:") and \
        (":inbox:" in key or ":urgent:" in key)


DELAYED_KINDS = [
    Kind("delayed-envelope", _envelope, _delayed_inject, _delayed_undo,
         explicit=lambda p: [b"\xff\xfe", S._deep(100_000, "dict"),
                             json.dumps({"key": p.k.task(str(uuid.uuid4())), "raw": "x"}).encode(),
                             json.dumps({"key": "ballast-foreign-key", "raw": "x"}).encode()],
         probes=("retry", "backlog"), accounted=_delayed_accounted, deadletter=True),
    _type_kind("delayed-wrong-type", lambda p: p.k.delayed, "zset", probes=("retry", "backlog")),
]


# ============================================================================= notify
def _notify_values(p: Poisoner):
    note = st.fixed_dictionaries({}, optional={
        "task": st.one_of(S.json_value(), st.just(str(uuid.uuid4()))),
        "state": st.one_of(S.json_value(), st.sampled_from(("completed", "failed", "pending"))),
        "mission": S.json_value(), "backlog": S.json_value(), "event": S.json_value()})
    return st.one_of(S.hostile_bytes(), note.map(S.dumps))


def _notify_inject(p: Poisoner, v):
    p.raw.publish(p.k.notify, v)
    return None


NOTIFY_KINDS = [
    Kind("notify", _notify_values, _notify_inject, lambda p, t: None,
         explicit=lambda p: [b"\xff\xfe", S._deep(100_000, "list"),
                             b'{"task": ["x"], "state": "completed"}',
                             b'{"mission": {"a": 1}, "event": "started"}',
                             json.dumps({"task": _wrong_typed_task(p).decode(),
                                         "state": "completed"}).encode()],
         probes=("backlog", "mission")),
]


# ============================================================================= missions
def _victim_mission(p: Poisoner) -> str:
    mid = p.new_mission()
    wait_until(lambda: p.raw.get(p.k.mission_lock(mid)) is not None, 3)
    return mid


def _mission_undo(p: Poisoner, tok) -> None:
    if not tok:
        return
    mid, extra = tok
    k = p.k
    p.raw.delete(k.mission(mid), k.mission_work(mid), k.mission_watch(mid), k.mission_log(mid),
                 k.mission_control(mid), k.mission_lock(mid), k.mission_meta(mid),
                 k.mission_tasks(mid), k.mission_cmd_watches(mid))
    try:
        p.raw.srem(k.missions_active, mid)
    except redis.RedisError:
        p.raw.delete(k.missions_active)
    if extra:
        restore(p, extra)


def _mission_kind(name: str, keyfn, how: str, fields=("x",)) -> Kind:
    """how: 'set' (string value), 'hash' (hostile fields), 'sadd', 'type' (wrong type)."""
    def inject(p: Poisoner, v):
        mid = _victim_mission(p)
        key = keyfn(p, mid)
        if how == "set":
            p.raw.set(key, v)
        elif how == "hash":
            if fields == ("<work>",):
                wids = p.raw.hkeys(key)
                v = {(wids[0] if wids else b"x"): next(iter(v.values()))}
            p.raw.hset(key, mapping=v)
        elif how == "sadd":
            p.raw.sadd(key, v)
        elif how == "type":
            S.write_type(p.raw, key, v)
        return mid, None
    if how == "set":
        values = lambda p: S.hostile_bytes()    # noqa: E731
    elif how == "hash":
        values = lambda p: S.hostile_hash_fields(fields)   # noqa: E731
    elif how == "sadd":
        values = lambda p: S.hostile_bytes().filter(bool)   # noqa: E731
    else:
        correct = {"dispatch_lock": "string", "mission": "string", "tasks": "set"}.get(
            name.split("-")[1], "hash")
        values = lambda p: S.wrong_type().filter(lambda t: t != correct)   # noqa: E731
    return Kind(name, values, inject, _mission_undo, probes=("mission", "backlog"))


def _global_type_kind(name: str, keyfn, correct: str) -> Kind:
    def inject(p: Poisoner, t):
        key = keyfn(p)
        tok = dump_restore(p, key)
        S.write_type(p.raw, key, t)
        return tok
    return Kind(name, lambda p: S.wrong_type().filter(lambda t: t != correct), inject, restore,
                probes=("mission", "backlog"))


MISSION_KINDS = [
    _mission_kind("mission-record", lambda p, m: p.k.mission(m), "set"),
    _mission_kind("mission-record-type", lambda p, m: p.k.mission(m), "type"),
    _mission_kind("mission-work", lambda p, m: p.k.mission_work(m), "hash", ("<work>",)),
    _mission_kind("mission-work-type", lambda p, m: p.k.mission_work(m), "type"),
    _mission_kind("mission-watch", lambda p, m: p.k.mission_watch(m), "hash", ("w1", "w2")),
    _mission_kind("mission-watch-type", lambda p, m: p.k.mission_watch(m), "type"),
    _mission_kind("mission-control", lambda p, m: p.k.mission_control(m), "hash", ("c1", "c2")),
    _mission_kind("mission-control-type", lambda p, m: p.k.mission_control(m), "type"),
    _mission_kind("mission-meta", lambda p, m: p.k.mission_meta(m), "hash",
                  ("fence", "max_attempts", "attempts:x", "implementer:x")),
    _mission_kind("mission-meta-type", lambda p, m: p.k.mission_meta(m), "type"),
    _mission_kind("mission-tasks", lambda p, m: p.k.mission_tasks(m), "sadd"),
    _mission_kind("mission-tasks-type", lambda p, m: p.k.mission_tasks(m), "type"),
    _mission_kind("mission-cmdwatch", lambda p, m: p.k.mission_cmd_watches(m), "hash", ("w",)),
    _mission_kind("mission-dispatch_lock", lambda p, m: p.k.mission_lock(m), "set"),
    _mission_kind("mission-dispatch_lock-type", lambda p, m: p.k.mission_lock(m), "type"),
    _global_type_kind("missions-active-type", lambda p: p.k.missions_active, "set"),
    _global_type_kind("mission-engines-type", lambda p: p.k.mission_engines, "zset"),
]


def _member_kind(name: str, keyfn, z: bool) -> Kind:
    def inject(p: Poisoner, v):
        (p.raw.zadd(keyfn(p), {v: int(time.time() * 1000)}) if z else p.raw.sadd(keyfn(p), v))
        return v

    def undo(p: Poisoner, v):
        if v is not None:
            (p.raw.zrem if z else p.raw.srem)(keyfn(p), v)
    return Kind(name, lambda p: S.hostile_bytes().filter(bool), inject, undo,
                probes=("mission", "backlog"),
                explicit=lambda p: [b"\xff\xfe", b"../../x", b"*", str(uuid.uuid4()).encode()])


MISSION_KINDS += [
    _member_kind("missions-active-member", lambda p: p.k.missions_active, False),
    _member_kind("mission-engines-member", lambda p: p.k.mission_engines, True),
]


# ============================================================================= write targets
def _daemon_key(p: Poisoner) -> str:
    st_ = p.site.status() or {}
    return p.k.daemon(st_.get("instance", "none"))


WRITE_KINDS = [
    _type_kind("events-stream-type", lambda p: p.k.events, "stream", probes=("victim", "backlog")),
    _type_kind("agent-events-type", lambda p: p.k.agent_events(p.victim), "stream",
               probes=("victim", "backlog")),
    _type_kind("activity-type", lambda p: p.k.activity(p.victim), "list",
               probes=("victim", "backlog")),
    _type_kind("deadletter-type", lambda p: p.k.deadletter, "list",
               probes=("victim", "backlog")),
    _type_kind("daemon-registry-type", _daemon_key, "hash", probes=("victim", "backlog")),
]


# ============================================================================= classes
def _run_kinds(trial: Trial, name: str, kinds: list[Kind]) -> None:
    import copy
    kinds = [copy.copy(k) for k in kinds]
    p = Poisoner(trial, name)
    p.kinds = kinds
    try:
        for k in kinds:
            if trial.budget.left() < 30:
                trial.result.note(f"out of time before kind {k.name}")
                break
            p.run(k)
    finally:
        p.finish()


def _poison(name, kinds, doc, **kw):
    @fault(name, doc, trials_full=1, budget_quick=kw.get("bq", 120), budget_full=kw.get("bf", 600))
    def fn(trial: Trial) -> None:
        _run_kinds(trial, name, kinds)
    return fn


_poison("poison-queues", QUEUE_KINDS, "hostile messages in inbox / urgent / in-flight lists, "
        "and those lists of the wrong Redis type")
_poison("poison-backlog", BACKLOG_KINDS, "hostile backlog entries (garbage ids, ghosts, a wrong-"
        "typed task key, 150 ghosts before a real task), the backlog of the wrong type")
_poison("poison-tasks", TASK_KINDS, "task hashes and daemon task meta with hostile fields or "
        "of the wrong Redis type, each with its task_assign queued")
_poison("poison-agents", AGENT_KINDS, "agent hashes, daemon agent info, agent_names (then a "
        "reload), lease keys and the stop flag: hostile values and wrong types")
_poison("poison-delayed", DELAYED_KINDS, "the retry zset: hostile envelopes (garbage, WRONGTYPE "
        "targets, keys outside the town), the zset of the wrong type")
_poison("poison-notify", NOTIFY_KINDS, "hostile PUBLISHes on the notify channel")
_MREC = ("mission-record", "mission-work", "mission-watch", "mission-control")
_poison("poison-missions", [k for k in MISSION_KINDS if k.name.startswith(_MREC)],
        "tt's mission records: the mission JSON, :work, :watch, :control (hostile values, wrong "
        "types)", bq=120, bf=700)
_poison("poison-mission-meta", [k for k in MISSION_KINDS if not k.name.startswith(_MREC)],
        "mission bookkeeping: daemon meta, bound tasks, cmdwatch, dispatch_lock, mission:active, "
        "mission:engines (hostile values, wrong types)", bq=120, bf=700)
_poison("poison-write-targets", WRITE_KINDS, "keys the daemon writes (events streams, activity, "
        "dead-letter list, daemon registry) of the wrong Redis type")
