"""Agent records of a town: registration by name, lookup, references, state.

Part of `Town` (store/town.py). Registration is idempotent by name: the daemon's name → aid map
(lua/register_agent.lua, HSETNX semantics) makes a restart or a second daemon reuse the record,
and an agent tt spawned with that exact name is adopted instead of getting a twin.
"""
from __future__ import annotations

import redis

from . import events, records
from .wire import AGENT_TERMINAL, RESERVED_AGENT_NAMES, SUPERVISOR_ID, canonical_id, hash_ts, is_uuid, new_id

SCAN_COUNT = 1000
READ_CHUNK = 500


def display_name(a: dict) -> str:
    return a.get("nickname") or a.get("name", "")


def display_label(a: dict) -> str:
    role = a.get("role_id")
    inner = role if role and role != "default" else a.get("name", "")
    return f"{display_name(a)} [{inner}]"


def match_agents(agents: list[dict], ref: str) -> list[dict]:
    """The agents a reference names, as tt resolves one: name, display name, display label or
    4-character short id, any case (a full id is matched by the callers first)."""
    low = ref.strip().lower()
    return [a for a in agents
            if low in ((a.get("name") or "").lower(), display_name(a).lower(),
                       display_label(a).lower())
            or (len(low) == 4 and (a.get("id") or "")[:4].lower() == low)]


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("agent name must not be empty")
    if name.lower() in RESERVED_AGENT_NAMES:
        raise ValueError(f"agent name {name!r} is reserved by Tinytown")
    return name


def _oldest_live(existing: list[dict]) -> str:
    """Of tt records with the same name: the oldest that is not stopped (else the oldest)."""
    live = [a for a in existing if a.get("state") not in AGENT_TERMINAL] or existing
    return sorted(live, key=lambda a: a.get("created_at", ""))[0]["id"]


class AgentRecords:
    """Agent operations of `Town` (self.r, self.keys, self.scripts, self.emit come from it)."""

    def register_agent(self, name: str, *, role: str | None = "worker", cli: str = "",
                       nickname: str | None = None) -> str:
        """Register (or find) the agent called `name`; return its id. The `cli` and `role_id`
        of an existing record are updated field by field when they differ."""
        name = _check_name(name)
        k = self.keys
        cur = self.r.hget(k.agent_names, name)
        if cur:
            rec = self.get_agent(cur)
            if rec:
                self._update_identity(cur, rec, role, cli, nickname)
                return cur
        existing = [a for a in self.list_agents() if a.get("name") == name]
        if existing:
            aid, pairs = _oldest_live(existing), []
        else:
            aid = new_id()
            h = records.new_agent_hash(aid, name, role=role, cli=cli, nickname=nickname)
            pairs = [x for kv in h.items() for x in kv]
        got, created = self.scripts.register_agent(keys=[k.agent_names],
                                                   args=[k.prefix, name, aid, *pairs])
        if int(created) == 1:
            self.emit(events.agent_spawned(got, name))
        else:
            rec = self.get_agent(got)
            if rec:
                self._update_identity(got, rec, role, cli, nickname)
        return got

    def register_agents(self, specs: list[dict]) -> list[str]:
        """`register_agent` for many agents ({name, role, cli}) at once: pipelined, one SCAN."""
        k = self.keys
        if not specs:
            return []
        p = self.r.pipeline(transaction=False)
        for s in specs:
            p.hget(k.agent_names, s["name"])
        mapped = p.execute()
        p = self.r.pipeline(transaction=False)
        for aid in mapped:
            p.hgetall(k.agent(aid)) if aid else p.exists(k.agent_names)
        recs = p.execute(raise_on_error=False)
        need = [i for i, (aid, rec) in enumerate(zip(mapped, recs))
                if not (aid and isinstance(rec, dict) and "id" in rec)]
        by_name: dict[str, list[dict]] = {}
        if need:
            for a in self.list_agents():
                by_name.setdefault(a.get("name", ""), []).append(a)
        out: list[str | None] = [None] * len(specs)
        p = self.r.pipeline(transaction=False)
        for i, s in enumerate(specs):
            if i not in need:
                out[i] = mapped[i]
                self._update_identity(mapped[i], recs[i], s.get("role"), s.get("cli", ""), None)
                continue
            name = _check_name(s["name"])
            existing = by_name.get(name)
            if existing:
                aid, pairs = _oldest_live(existing), []
            else:
                aid = new_id()
                h = records.new_agent_hash(aid, name, role=s.get("role"), cli=s.get("cli", ""))
                pairs = [x for kv in h.items() for x in kv]
            self.scripts.register_agent(keys=[k.agent_names], args=[k.prefix, name, aid, *pairs],
                                        client=p)
        res = p.execute()
        created = []
        j = 0
        for i, s in enumerate(specs):
            if out[i] is None:
                got, how = res[j]
                j += 1
                out[i] = got
                if int(how) == 1:
                    created.append(events.agent_spawned(got, s["name"]))
                else:
                    rec = self.get_agent(got)
                    if rec:
                        self._update_identity(got, rec, s.get("role"), s.get("cli", ""), None)
        if created:
            self.emit(*created)
        return out  # type: ignore[return-value]

    def _update_identity(self, aid: str, rec: dict, role, cli, nickname) -> None:
        upd = {}
        if cli and rec.get("cli") != cli:
            upd["cli"] = cli
        if role and rec.get("role_id") != role:
            upd["role_id"] = role
        if nickname and rec.get("nickname") != nickname:
            upd["nickname"] = nickname
        if upd:
            self.r.hset(self.keys.agent(aid), mapping=upd)

    def get_agent(self, aid: str) -> dict | None:
        try:
            h = self.r.hgetall(self.keys.agent(aid))
        except redis.ResponseError:  # WRONGTYPE: a legacy JSON-string agent
            return None
        return h if h and "id" in h else None

    def list_agents(self) -> list[dict]:
        """All agent hashes of the town (SCAN with an escaped pattern; skips unreadable keys)."""
        return self._list(self.keys.pattern("agent"))

    def _list(self, pattern: str) -> list[dict]:
        keys = list(self.r.scan_iter(match=pattern, count=SCAN_COUNT))
        out: list[dict] = []
        for i in range(0, len(keys), READ_CHUNK):
            p = self.r.pipeline(transaction=False)
            for key in keys[i:i + READ_CHUNK]:
                p.hgetall(key)
            for h in p.execute(raise_on_error=False):
                if isinstance(h, dict) and "id" in h:
                    out.append(h)
        out.sort(key=lambda h: (h.get("created_at", ""), h.get("name", h.get("id"))))
        return out

    def resolve_agent(self, ref: str) -> str:
        """An agent id from a name, nickname, display label, UUID or 4-char short id (as tt).

        Raises LookupError("unknown agent …" / "ambiguous agent reference …").
        """
        s = (ref or "").strip()
        if not s:
            raise LookupError("unknown agent '': empty reference")
        if s.lower() in RESERVED_AGENT_NAMES:
            return SUPERVISOR_ID
        if is_uuid(s):
            aid = canonical_id(s)
            if aid == SUPERVISOR_ID or self.r.exists(self.keys.agent(aid)):
                return aid
            raise LookupError(f"unknown agent {ref!r}: no agent with that id in town "
                              f"{self.keys.town!r}")
        matches = match_agents(self.list_agents(), s)
        if len(matches) == 1:
            return matches[0]["id"]
        if not matches:
            raise LookupError(f"unknown agent {ref!r} in town {self.keys.town!r}")
        which = ", ".join(f"{a.get('name')} ({a['id']})" for a in matches[:10])
        raise LookupError(f"ambiguous agent reference {ref!r}: matches {which}")

    def agent_state(self, aid: str) -> str:
        """tt's reading of the agent's state; LookupError for an unknown agent."""
        st = self.r.hget(self.keys.agent(aid), "state")
        if st is None and not self.r.exists(self.keys.agent(aid)):
            raise LookupError(f"unknown agent {aid!r}")
        return records.parse_agent({"id": aid, "state": st})["state"]

    def set_agent_state(self, aid: str, new: str, *, old: str | None = None, pipe=None,
                        event: bool = True, stamp_active: bool = False) -> None:
        """HSET state (+ heartbeat, + last_active_at) and an agent_state_changed event."""
        now = hash_ts()
        p = pipe if pipe is not None else self.r.pipeline(transaction=False)
        fields = {"state": new, "last_heartbeat": now}
        if stamp_active:
            fields["last_active_at"] = now
        p.hset(self.keys.agent(aid), mapping=fields)
        if event and old != new:
            events.queue(p, self.keys, events.agent_state_changed(aid, old or "starting", new))
        if pipe is None:
            p.execute()

    def beat_command(self, aid: str, now: str) -> tuple:
        """The agent's heartbeat (last_heartbeat = now), as one command for a raw pipeline."""
        return ("HSET", self.keys.agent(aid), "last_heartbeat", now)

    def clear_current_task(self, aid: str, pipe) -> None:
        pipe.hdel(self.keys.agent(aid), "current_task")
