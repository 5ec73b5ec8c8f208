"""What the end of a round writes, one method per outcome (the Round decides which:
round.py's `_end`, from outcome.py): exit 0 (round_ok, with the next take in the same call), a
retry after a backoff, a deferral, a rate limit; and the bookkeeping every round end shares.

A mixin of Round: the methods use the round's worker (`w`), keys (`k`), agent id, task id, taken
messages and verdict.
"""
from __future__ import annotations

import time

import redis

from tinytownd import metrics
from tinytownd.store import events, records
from tinytownd.store.wire import hash_ts

from . import runner
from .agent_cli import accounting
from .agent_cli.cooldown import JITTER, cooldown_named_s


class RoundWrites:
    def _queue_usage(self, p) -> None:
        accounting.queue_usage(p, self.links.scripts, self.k, aid=self.aid,
                               meta_key=self.attempts_key, mission=self.mission,
                               u=self.verdict.usage)

    def _rate_limited(self, err: str, result) -> None:
        """The CLI's provider said "not now": the attempt is given back, the messages go back to
        their queue heads, and the CLI cools down for every agent of the town (the next take of
        any of them waits it out)."""
        w, tid, town, s = self.w, self.tid, self.links.town, self.w.settings
        cli = s.agent_cli
        cd = self.links.cli_state.rate_limited(
            s.cli, cooldown_s=cli.cooldown_s, cooldown_max_s=cli.cooldown_max_s,
            named_s=cooldown_named_s(self.verdict.retry_after_s), reason=err, jitter=JITTER)
        secs = round((cd["until_ms"] - cd["now_ms"]) / 1000, 1)
        w.extra_ack = []
        p = w.r.pipeline(transaction=False)
        if self.attempts_key:
            self.links.scripts.counter(keys=[self.attempts_key], args=["attempts", -1], client=p)
        if tid:
            town.reassigned(tid, p)
        self._queue_usage(p)
        accounting.queue_failure(p, self.attempts_key, self.meta, "rate_limited", err)
        if self.attempts_key:
            p.hset(self.attempts_key, "last_error", err)
        self.links.scripts.requeue_inflight(keys=w.queue_keys(), client=p)
        p.execute()
        w.log.warning("round rate limited: the task goes back without using an attempt; the "
                      "CLI cools down", cli=s.cli, cooldown_s=secs, level=cd["level"],
                      named_s=self.verdict.retry_after_s, failure_class="rate_limited")
        self._round_end(f"⏳ rate limited ({err}); CLI {s.cli} cools down {secs:g}s", result)

    def _retry(self, backoff_s: float, err: str, result, *, activity: str | None = None) -> None:
        """The messages come back after `backoff_s` (envelopes in the delayed zset, parked in
        the same call as the ack); the task waits in `assigned`."""
        w, k, a, tid, town = self.w, self.k, self.aid, self.tid, self.links.town
        due = int((time.time() + backoff_s) * 1000)
        if tid:
            p = w.r.pipeline(transaction=False)
            town.reassigned(tid, p)
            p.hset(self.attempts_key, "last_error", err)
            p.execute()
        entries = []
        for wh, raw, m in self.msgs:
            if records.is_actionable(m):
                env = records.dumps({"key": k.urgent(a) if wh == "u" else k.inbox(a),
                                     "raw": raw, "id": m["id"], "head": wh == "u"})
                entries.append((wh, raw, str(due), env))
            else:
                entries.append((wh, raw, "", ""))
        self._ack(entries)
        self._round_end(activity or f"⚠️ CLI error ({err}); retry in {backoff_s:g}s", result)

    def _defer(self, why: str, cfg) -> None:
        """The daemon cannot run this round (its own disk): the attempt is given back and the
        work comes back after a growing pause; status and logs say why."""
        w, rt = self.w, cfg.runtime
        w.deferrals += 1
        backoff = max(1.0, min(rt.retry_backoff_s * 2 ** (w.deferrals - 1),
                               rt.retry_backoff_max_s))
        w.problem = why
        metrics.ROUNDS.inc(w.settings.cli, "deferred")
        w.log.warning("round deferred: the daemon cannot run it", reason=why, retry_in_s=backoff)
        if self.attempts_key:
            self.links.scripts.counter(keys=[self.attempts_key], args=["attempts", -1])
        self._retry(backoff, why, runner.CliResult(None, False, False, 0.0, None, error=why),
                    activity=f"⏸️ deferred ({why}); retry in {backoff:g}s")

    def _ok(self, result_text: str, result) -> None:
        """Exit 0 in one call (lua/round_ok.lua): complete the task unless the CLI finished it,
        ack, round bookkeeping, activity, the events and the notify."""
        w, k, a, tid, links = self.w, self.k, self.aid, self.tid, self.links
        mode = links.config().runtime.task_events
        now = hash_ts()
        ts = now.replace("+00:00", "Z")
        exp_aid = exp_tags = task_data = mission = note = ""
        if tid:
            task = self.task or {}
            exp_aid, exp_tags = task.get("assigned_to") or "", task.get("tags") or "[]"
            mission = records.mission_of(records.decode_tags(exp_tags)) or ""
            if mode != "none":
                task_data = events.task_completed(tid, exp_aid, mission=mission or None,
                                                  timestamp=ts).data
            note = links.town.task_note(tid, "completed", mission or None)
        idle_data = events.agent_state_changed(a, "working", "idle", timestamp=ts).data \
            if mode == "lifecycle" else ""
        args = [k.prefix, now, result_text, tid or "", exp_aid, exp_tags, task_data, mission,
                k.notify, note, idle_data, f"Round {w.rounds}: ✅ completed", links.owner,
                events.TOWN_MAXLEN, events.AGENT_MAXLEN, events.MISSION_MAXLEN,
                accounting.usage_arg(self.verdict.usage),
                "1" if w.last_exit != "0" or self.wrote_info else "0",
                "1" if w.crashes_to_clear else "0", "1" if w.activity_expiry_due() else "0",
                *self._ack_groups((wh, raw, "", "") for wh, raw, _m in self.msgs)]
        w.crashes_to_clear = False
        w.last_exit = "0"
        keys = [k.task(tid) if tid else k.agent(a), k.inflight_urgent(a), k.inflight(a),
                k.urgent(a), k.inbox(a), k.agent_lease(a), k.delayed, k.agent(a),
                k.agent_info(a), k.activity(a), k.events, k.agent_events(a)]
        if w.leaving():
            res = links.scripts.round_ok(keys=keys, args=args)
        else:
            # the next round's take in the same call (the loop uses it instead of its own take)
            res, w.next_take = links.scripts.round_ok_take(
                keys=keys + w.take_keys, args=[len(keys), len(args), *args, *w.take_args()])
        code, fa, fb, evd, acked, old = res
        code = int(code)
        self._acked(acked)
        w.current_task = None
        w.state = "idle" if old in ("working", "idle", "starting", None) else old
        if code == -1:
            w.log.warning("task vanished during its round", task=tid)
        elif code == 1 and not int(evd):
            # assigned_to or tags changed during the round: the events from what Redis holds
            p2 = w.r.pipeline(transaction=False)
            links.town.finish_result(p2, tid, "completed", result_text, [1, fa, fb])
            if old == "working" and mode == "lifecycle":
                links.town.emit(events.agent_state_changed(a, "working", "idle"), pipe=p2)
            try:
                p2.execute()
            except redis.RedisError as e:
                w.log.warning("round events not recorded", error=str(e))
        w.log.info("round completed", round=self.rnd, duration_s=round(result.duration_s, 3))

    def _round_end(self, activity: str, result) -> None:
        w, k, a, links = self.w, self.k, self.aid, self.links
        now = hash_ts()
        p = w.r.pipeline(transaction=False)
        links.scripts.agent_round_end(keys=[k.agent(a)], args=[now, self.tid or ""], client=p)
        w.last_exit = "" if result.exit_code is None else str(result.exit_code)
        p.hset(k.agent_info(a), mapping={"last_exit": w.last_exit, "task": ""})
        if w.crashes_to_clear:
            p.hdel(k.agent_info(a), "crashes")    # the round ended: the worker survived it
            w.crashes_to_clear = False
        links.town.log_activity(a, f"Round {w.rounds}: {activity}", pipe=p)
        old = p.execute()[0]
        w.current_task = None
        w.state = "idle" if old in ("working", "idle", "starting", None) else old
        if old == "working" and links.config().runtime.task_events == "lifecycle":
            links.town.emit(events.agent_state_changed(a, "working", "idle"))
