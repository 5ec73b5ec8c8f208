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
