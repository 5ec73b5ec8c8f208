"""The Redis key schema: every key tinytownd reads or writes, in one place.

Town keys (shared with Tinytown's `tt`; shapes exactly as tt writes them)
--------------------------------------------------------------------------------
tt:<town>:agent:<aid>              hash    agent record (id name nickname role_id parent_agent_id
                                           spawn_mode agent_type state cli current_task created_at
                                           last_heartbeat tasks_completed rounds_completed
                                           last_active_at). tinytownd updates single fields (HSET/
                                           HINCRBY/HDEL) and keeps unknown fields.
tt:<town>:inbox:<aid>              list    JSON messages. normal/low: RPUSH (FIFO); high/urgent: LPUSH.
                                           Consumers take from the left (LPOP / LMOVE LEFT).
tt:<town>:urgent:<aid>             list    JSON messages, LPUSH (a stack); read before the inbox.
tt:<town>:activity:<aid>           list    free-text lines, LPUSH + LTRIM 0 9 + EXPIRE 3600.
tt:<town>:stop:<aid>               string  "1", SET EX 3600: the agent should stop. Workers DEL it on
                                           (re)start and on exit.
tt:<town>:task:<tid>               hash    task record (id description state created_at updated_at tags
                                           assigned_to started_at completed_at result parent_id).
tt:<town>:backlog                  list    task ids, RPUSH; claimed with LREM 1 (atomic, see lua/).
tt:<town>:events                   stream  event_type + data(JSON TownEvent), XADD MAXLEN ~ 1000.
tt:<town>:events:agent:<aid>       stream  same, MAXLEN ~ 100.
tt:<town>:events:mission:<mid>     stream  same, MAXLEN ~ 500.
tt:<town>:mission:<mid>            string  JSON MissionRun (SET/GET).
tt:<town>:mission:<mid>:work       hash    field work-item id → JSON WorkItem.
tt:<town>:mission:<mid>:watch      hash    field watch id → JSON WatchItem.
tt:<town>:mission:<mid>:events     list    "[YYYY-MM-DD HH:MM:SS] text", LPUSH + LTRIM 0 99.
tt:<town>:mission:<mid>:control    hash    field control id → JSON MissionControlMessage.
tt:<town>:mission:<mid>:dispatch_lock string owner token; SET NX EX <ttl>, compare-and-set refresh /
                                           compare-and-delete release (tt's lease protocol).
tt:<town>:mission:active           set     ids of missions the dispatcher drives.

Daemon keys (tt ignores them): tt:<town>:tinytownd:…
----------------------------------------------------
daemon:<instance>                  hash    a running daemon: pid host started_at heartbeat version
                                           config_path agents (JSON list of the agent names it
                                           runs now) primary (the Redis it writes to); EXPIRE
                                           3×lease ttl, refreshed by the daemon. The daemon
                                           registry: `tinytownd status --town` lists every daemon
                                           attached to the town from these (SCAN daemon:*).
lease:agent:<aid>                  string  instance id of the daemon that runs the agent; SET NX PX,
                                           renewed every ttl/3 by compare-and-set, released by
                                           compare-and-delete. No lease → nobody runs the agent.
agent_names                        hash    agent name → aid; HSETNX makes registration by name
                                           idempotent across restarts and across daemons.
agent:<aid>                        hash    daemon-side agent info: owner, pid (of the running CLI),
                                           cli, last_exit (of the last round, written when it
                                           changes), crashes; round, round_started_at, task of a
                                           round started by lua/round_start.lua (the running round
                                           is in `tinytownd status`); usage sums of its rounds
                                           (input_tokens … cost_usd, as task:<tid>).
inflight:<aid>                     list    messages moved out of the inbox for the current round
                                           (LMOVE inbox→inflight, in one Lua call). Acked by DEL at the
                                           end of the round; re-queued to the inbox head when a worker
                                           (re)starts or the sweeper recovers the agent.
inflight_urgent:<aid>              list    the same for messages taken from the urgent list.
delayed                            zset    retry envelopes {"key","raw","id"}, score = due time (ms);
                                           a timer moves due ones back to their list (Lua, atomic).
task:<tid>                         hash    daemon bookkeeping of a task: attempts max_attempts timeout_s
                                           last_error agent role, batch batch_task (written only
                                           when there is something to record: an embedded batch
                                           without worktrees or a cost budget links its tasks by
                                           batch:<bid>:ids only); log:<attempt> = the file name of
                                           that attempt's round log under <root>/logs when
                                           lua/round_start.lua started it (a round take_round.lua
                                           started is found by its file name,
                                           <agent>_round_<n>_<tid>.log); its workspace (worktree
                                           mode, workspaces/records.py): branch base head
                                           files_changed insertions deletions worktree (the path,
                                           while it exists) workspace_repo workspace_git
                                           workspace_dir workspace_keep workspace_commit
                                           workspace_setup workspace_ended; last_class and failures
                                           (JSON list of {class, error, at}, newest 20) of failed
                                           rounds; usage summed over rounds: input_tokens
                                           output_tokens cached_tokens cache_write_tokens turns
                                           cost_usd, and the last model and session_id
                                           (runtime/agent_cli/usage.py).
workspaces                         set     ids of tasks whose worktree may exist (SADD before it is
                                           made, SREM once it is removed): `tinytownd workspaces`
                                           and the daemon's sweep of ended tasks read it.
cli:<name>                         hash    an agent CLI's state for the whole town (every daemon on
                                           the Redis): cooldown_until (ms, Redis clock) cooldown_level
                                           cooldown_reason cooldown_at cooldown_s after a rate limit;
                                           paused ("1") paused_reason paused_at after a fatal error.
                                           take_round.lua reads it in the same call as the take
                                           (store/cli_state.py; cleared by `resume-cli`, a reload).
deadletter                         list    JSON {id reason source raw at ...}: messages that did not
                                           parse and tasks that used up their attempts. RPUSH.
deadletter:count                   string  entries ever added to deadletter, by any daemon, from
                                           Python or Lua (INCR beside every RPUSH): the list keeps
                                           only its newest entries, this counts them all
                                           (tinytownd_deadlettered_total on /metrics).
notify                             channel PUBLISH of {"task": tid, "state": s, "mission": mid?} when a
                                           task reaches a terminal state, so mission owners wake at once;
                                           and {"task": tid, "state": "pending", "backlog": true} when a
                                           task is put on the backlog (runtime claims wake on it).
batch:<bid>                        hash    batch run meta: state created_at file totals...; the usage
                                           sums of its tasks' rounds (input_tokens … cost_usd), added
                                           at each round's end (lua/add_usage.lua), which
                                           --max-cost-usd compares with its budget; stop_reason.
batch:<bid>:tasks                  list    task ids of the batch, in file order.
batch:<bid>:ids                    hash    batch-file task id → task uuid (idempotent submission).
mission:<mid>                      hash    daemon bookkeeping of a mission: fence (token counter),
                                           file ids, per-item attempts ("attempts:<wid>") and
                                           implementer ("implementer:<wid>"); max_cost_usd (policy)
                                           and the usage sums of its tasks' rounds (input_tokens …
                                           cost_usd), written by the runtime at each round's end.
mission:<mid>:tasks                set     ids of tasks bound to the mission that the engine has not
                                           processed yet (live, or terminal and not yet reconciled).
mission:<mid>:cmdwatch             hash    command-watch id → JSON CommandWatch (tt has no such
                                           WatchKind, so these never go into tt's :watch hash).
mission:engines                    zset    mission-engine instance → last heartbeat (ms); used to
                                           split missions fairly between daemons.
"""
from __future__ import annotations

import re

_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """Escape glob characters so a town name can be used in SCAN MATCH patterns."""
    return _GLOB.sub(r"\\\1", text)


class Keys:
    """Builds the keys of one town. Cheap; make one per town and keep it."""

    __slots__ = ("town", "prefix", "daemon_prefix")

    def __init__(self, town: str):
        self.town = town
        self.prefix = f"tt:{town}:"              # every key of the town
        self.daemon_prefix = f"tt:{town}:tinytownd:"   # the daemon's own keys

    # --- town keys shared with tt ---
    def agent(self, aid: str) -> str:
        return f"{self.prefix}agent:{aid}"

    def inbox(self, aid: str) -> str:
        return f"{self.prefix}inbox:{aid}"

    def urgent(self, aid: str) -> str:
        return f"{self.prefix}urgent:{aid}"

    def activity(self, aid: str) -> str:
        return f"{self.prefix}activity:{aid}"

    def stop(self, aid: str) -> str:
        return f"{self.prefix}stop:{aid}"

    def task(self, tid: str) -> str:
        return f"{self.prefix}task:{tid}"

    @property
    def backlog(self) -> str:
        return f"{self.prefix}backlog"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    def agent_events(self, aid: str) -> str:
        return f"{self.prefix}events:agent:{aid}"

    def mission_events_stream(self, mid: str) -> str:
        return f"{self.prefix}events:mission:{mid}"

    def mission(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}"

    def mission_work(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}:work"

    def mission_watch(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}:watch"

    def mission_log(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}:events"

    def mission_control(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}:control"

    def mission_lock(self, mid: str) -> str:
        return f"{self.prefix}mission:{mid}:dispatch_lock"

    @property
    def missions_active(self) -> str:
        return f"{self.prefix}mission:active"

    # --- scan patterns (the town name escaped: a name with glob characters must not match others) ---
    def pattern(self, kind: str) -> str:
        return f"tt:{glob_escape(self.town)}:{kind}:*"

    # --- daemon keys ---
    def daemon(self, instance: str) -> str:
        return f"{self.daemon_prefix}daemon:{instance}"

    def daemon_pattern(self) -> str:
        return f"tt:{glob_escape(self.town)}:tinytownd:daemon:*"

    def agent_lease(self, aid: str) -> str:
        return f"{self.daemon_prefix}lease:agent:{aid}"

    @property
    def agent_names(self) -> str:
        return f"{self.daemon_prefix}agent_names"

    def agent_info(self, aid: str) -> str:
        return f"{self.daemon_prefix}agent:{aid}"

    def inflight(self, aid: str) -> str:
        return f"{self.daemon_prefix}inflight:{aid}"

    def inflight_urgent(self, aid: str) -> str:
        return f"{self.daemon_prefix}inflight_urgent:{aid}"

    @property
    def delayed(self) -> str:
        return f"{self.daemon_prefix}delayed"

    def task_meta(self, tid: str) -> str:
        return f"{self.daemon_prefix}task:{tid}"

    @property
    def deadletter(self) -> str:
        return f"{self.daemon_prefix}deadletter"

    @property
    def deadletter_count(self) -> str:
        return f"{self.daemon_prefix}deadletter:count"    # = deadletter .. ':count' in Lua

    @property
    def workspaces(self) -> str:
        return f"{self.daemon_prefix}workspaces"

    @property
    def notify(self) -> str:
        return f"{self.daemon_prefix}notify"

    def cli(self, name: str) -> str:
        return f"{self.daemon_prefix}cli:{name}"

    def batch(self, bid: str) -> str:
        return f"{self.daemon_prefix}batch:{bid}"

    def batch_tasks(self, bid: str) -> str:
        return f"{self.daemon_prefix}batch:{bid}:tasks"

    def batch_ids(self, bid: str) -> str:
        return f"{self.daemon_prefix}batch:{bid}:ids"

    def mission_meta(self, mid: str) -> str:
        return f"{self.daemon_prefix}mission:{mid}"

    def mission_tasks(self, mid: str) -> str:
        return f"{self.daemon_prefix}mission:{mid}:tasks"

    def mission_cmd_watches(self, mid: str) -> str:
        return f"{self.daemon_prefix}mission:{mid}:cmdwatch"

    @property
    def mission_engines(self) -> str:
        return f"{self.daemon_prefix}mission:engines"
