"""What may stop a batch before its work is done, other than a signal: its cost budget
(`--max-cost-usd`), an agent CLI paused after a fatal error, and cooldowns after rate limits
that last longer than `--max-wait`. Also what the progress shows meanwhile: each CLI's
cooldown (until when) and pause.

`decide` is pure. `Guard` is its I/O: a greenlet that every INTERVAL_S reads the states of the
batch's agent CLIs (store/cli_state.py) and what the batch spent (the usage sums of
`batch:<bid>`, or of the mission's meta for a mission batch) in one pipeline, reports changes,
tells a dispatching batch which agents not to hand work to, and on a stop sets the batch's stop
event with the reason (the batch then drains as after Ctrl-C and exits 75, resumable).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import gevent

from tinytownd.store.cli_state import describe, now_ms

INTERVAL_S = 0.5


@dataclass
class Decision:
    stop: str | None = None            # None | "budget" | "cli_paused" | "max_wait"
    message: str = ""
    paused: dict = field(default_factory=dict)     # cli -> reason
    cooling: dict = field(default_factory=dict)    # cli -> describe() of its cooldown
    all_cooling: bool = False          # every CLI of the batch cools down (or is paused)


def decide(*, clis: set[str], states: dict[str, dict], spent_usd: float,
           max_cost_usd: float | None, waited_s: float, max_wait_s: float | None,
           stuck_with_paused: bool = False) -> Decision:
    """`clis`: the agent CLIs that serve the batch; `states`: cli_state.describe() of each;
    `waited_s`: how long every one of them has been cooling down so far (summed over the run);
    `stuck_with_paused`: every unfinished task waits with an agent of a paused CLI."""
    d = Decision()
    for name in sorted(clis):
        st = states.get(name) or {}
        if st.get("paused"):
            d.paused[name] = st.get("paused_reason") or ""
        elif st.get("cooldown_until"):
            d.cooling[name] = st
    d.all_cooling = bool(clis) and all(n in d.paused or n in d.cooling for n in clis)
    if max_cost_usd is not None and spent_usd >= max_cost_usd:
        d.stop = "budget"
        d.message = (f"cost budget reached: ${spent_usd:.4f} spent of --max-cost-usd "
                     f"{max_cost_usd:g}; nothing new is started, running tasks finish")
    elif d.paused and (len(d.paused) == len(clis) or stuck_with_paused):
        d.stop = "cli_paused"
        d.message = "; ".join(f"agent CLI {n} is paused after a fatal error ({r})"
                              for n, r in d.paused.items()) + \
            ": its agents take no work, the batch stops here instead of failing every task"
    elif max_wait_s is not None and d.all_cooling and d.cooling and waited_s >= max_wait_s:
        d.stop = "max_wait"
        d.message = (f"waited {waited_s:.0f}s for agent CLI cooldowns (--max-wait "
                     f"{max_wait_s:g}): " + "; ".join(
                         f"{n} cools down until {st['cooldown_until']}"
                         for n, st in d.cooling.items()))
    return d


def resume_hint(stop: str, clis: list[str]) -> str:
    """What to do before --resume."""
    if stop == "budget":
        return "raise --max-cost-usd and "
    if stop == "cli_paused":
        return (f"fix {', '.join(clis)} (a daemon: `tinytownd resume-cli NAME`; an embedded "
                "batch's start ends the pause) and ")
    return ""


class Guard:
    """Watches one batch (see the module doc). `agent_clis`: agent name → CLI name."""

    def __init__(self, batch, reporter, stop_event, *, agent_clis: dict[str, str],
                 max_cost_usd: float | None, max_wait_s: float | None, on_stop=None,
                 pauses_since: str | None = None):
        self.batch = batch
        # an embedded batch's start ends every pause of its CLIs (its daemon's start does so):
        # a pause older than that start is stale, whoever reads it first
        self.pauses_since = pauses_since
        self.reporter = reporter
        self.stop_event = stop_event
        self.agent_clis = dict(agent_clis)
        self.clis = set(self.agent_clis.values())
        self.max_cost_usd = max_cost_usd
        self.max_wait_s = max_wait_s
        self.on_stop = on_stop
        self.decision = Decision()
        self.waited_s = 0.0
        self.spent_usd = 0.0
        self._shown: dict[str, str] = {}       # cli -> what the progress last said of it
        self._aids: dict[str, str] | None = None
        self._g = None

    # --- the loop -----------------------------------------------------------------------
    def start(self) -> "Guard":
        if self.max_cost_usd is not None and hasattr(self.batch, "gate"):
            self.batch.gate = self._gate
        if self.clis or self.max_cost_usd is not None:
            self._g = gevent.spawn(self._run)
        return self

    def _gate(self) -> bool:
        """A dispatching batch asks before each hand-out: False once the budget is spent (and
        the stop is set at once, not at the next look)."""
        if self.decision.stop:
            return False
        try:
            spent = float(self.batch.redis.hget(self._spent_key(), "cost_usd") or 0)
        except (TypeError, ValueError):
            spent = 0.0
        if spent < self.max_cost_usd:
            return True
        self.check(0.0)
        return False

    def stop(self) -> None:
        if self._g is not None:
            self._g.kill(block=False)

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.check(time.monotonic() - last)
            except Exception as e:    # Redis blip: the next look retries
                if self.batch.log:
                    self.batch.log.warning("batch guard read failed", error=str(e))
            last = time.monotonic()
            if self.decision.stop:
                return
            gevent.sleep(INTERVAL_S)

    def _spent_key(self) -> str:
        mid = getattr(self.batch, "mission_id", None)
        k = self.batch.keys
        return k.mission_meta(mid) if mid else k.batch(self.batch.id)

    def read(self) -> tuple[dict[str, dict], float]:
        names = sorted(self.clis)
        p = self.batch.redis.pipeline(transaction=False)
        for n in names:
            p.hgetall(self.batch.keys.cli(n))
        p.hget(self._spent_key(), "cost_usd")
        res = p.execute()
        now = now_ms()
        states = {n: describe(n, h if isinstance(h, dict) else {}, now)
                  for n, h in zip(names, res)}
        if self.pauses_since:
            for st in states.values():
                if st.get("paused") and str(st.get("paused_at") or "") < self.pauses_since:
                    st["paused"] = False
        try:
            spent = float(res[-1] or 0)
        except (TypeError, ValueError):
            spent = 0.0
        return states, spent

    def check(self, dt: float) -> Decision:
        states, self.spent_usd = self.read()
        if self.decision.all_cooling:
            self.waited_s += dt
        d = decide(clis=self.clis, states=states, spent_usd=self.spent_usd,
                   max_cost_usd=self.max_cost_usd, waited_s=self.waited_s,
                   max_wait_s=self.max_wait_s, stuck_with_paused=self._stuck(states))
        self.decision = d
        self._block_paused(d)
        self._show(d)
        if d.stop:
            self._note(d.message, "batch.stopping", reason=d.stop, spent_usd=self.spent_usd)
            if self.on_stop is not None:
                self.on_stop(d)
            self.stop_event.set()
        return d

    # --- dispatch -----------------------------------------------------------------------
    def _agent_ids(self) -> dict[str, str]:
        """aid → CLI name of the batch's agents (read once they are registered)."""
        if self._aids is None:
            names = list(self.agent_clis)
            aids = self.batch.redis.hmget(self.batch.keys.agent_names, names) if names else []
            if names and not all(aids):
                return {}
            self._aids = {aid: self.agent_clis[n] for n, aid in zip(names, aids)}
        return self._aids

    def _block_paused(self, d: Decision) -> None:
        if hasattr(self.batch, "blocked_aids"):
            self.batch.blocked_aids = {aid for aid, cli in self._agent_ids().items()
                                       if cli in d.paused}

    def _stuck(self, states) -> bool:
        """A dispatching batch whose every unfinished task waits with a paused CLI's agent."""
        holder = getattr(self.batch, "holder", None)
        if holder is None or getattr(self.batch, "queue", None):
            return False
        paused = {n for n, st in states.items() if st.get("paused")}
        aids = self._agent_ids()
        return bool(holder) and all(aids.get(aid) in paused for aid in holder.values())

    # --- progress -----------------------------------------------------------------------
    def _show(self, d: Decision) -> None:
        for name in sorted(self.clis):
            if name in d.paused:
                said = f"paused:{d.paused[name]}"
                text = f"agent CLI {name}: paused after a fatal error: {d.paused[name]}"
                fields = {"cli": name, "paused": True, "reason": d.paused[name]}
            elif name in d.cooling:
                st = d.cooling[name]
                said = f"cooldown:{st['cooldown_until']}"
                text = (f"agent CLI {name}: rate limited, cooling down until "
                        f"{st['cooldown_until']} ({st['cooldown_left_s']:.0f}s): "
                        f"{st.get('cooldown_reason', '')}")
                fields = {"cli": name, "cooldown_until": st["cooldown_until"],
                          "cooldown_left_s": st["cooldown_left_s"],
                          "reason": st.get("cooldown_reason", "")}
            else:
                said, text, fields = "", f"agent CLI {name}: working again", {"cli": name}
            if self._shown.get(name, "") != said:
                if said or self._shown.get(name):
                    self._note(text, "batch.cli_state", **fields)
                self._shown[name] = said

    def _note(self, text: str, event: str, **fields) -> None:
        from .progress import JsonProgress

        if self.reporter is None:
            return
        if isinstance(self.reporter, JsonProgress):
            self.reporter.note(event, message=text, **fields)
        else:
            self.reporter.note(text)
