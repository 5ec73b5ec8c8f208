"""The town event stream as a feed: decoding an entry, the ?agent= / ?mission= filter, and the
SSE frame. Pure; shared by /api/events and `tinytownd events`."""
from __future__ import annotations

import json
import re

AGENT_FIELDS = ("agent_id", "parent_agent_id", "child_agent_id")
_STREAM_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")


def decode(entry_id: str, fields: dict) -> dict:
    """A stream entry → {"id", "event_type", ...TownEvent fields}. Junk data is kept as text."""
    raw = fields.get("data")
    try:
        data = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        data = {"message": str(raw)[:500], "unreadable": True}
    if not isinstance(data, dict):
        data = {"message": str(raw)[:500], "unreadable": True}
    ev = {"id": entry_id, "event_type": fields.get("event_type") or data.get("event_type")}
    ev.update((k, v) for k, v in data.items() if k not in ("id", "event_type"))
    return ev


def matches(ev: dict, *, agents: set[str] | None = None, mission: str | None = None) -> bool:
    """`agents`: ids an event must name (any of its agent fields); `mission`: its mission id."""
    if agents is not None and not any(ev.get(f) in agents for f in AGENT_FIELDS):
        return False
    if mission is not None and ev.get("mission_id") != mission:
        return False
    return True


def sse_frame(entry_id: str, fields: dict) -> str:
    """One Server-Sent Event: the stream id as the SSE id (a reconnect resumes after it), the
    TownEvent JSON as tt wrote it as the data (one line: JSON has no raw newlines). Entries
    whose data is not a JSON object are sent as decoded (with `unreadable`)."""
    raw = fields.get("data")
    if not (isinstance(raw, str) and raw.startswith("{") and "\n" not in raw
            and "\r" not in raw):
        ev = decode(entry_id, fields)
        ev.pop("id", None)
        raw = json.dumps(ev, ensure_ascii=False, separators=(",", ":"))
    return f"id: {entry_id}\nevent: town\ndata: {raw}\n\n"


def may_match(fields: dict, *, agents: set[str] | None, mission: str | None) -> bool:
    """A cheap first look (substring) before decoding: False means surely not a match."""
    raw = fields.get("data")
    if not isinstance(raw, str):
        return True
    if agents is not None and not any(a in raw for a in agents):
        return False
    return mission is None or mission in raw


def valid_stream_id(text: str) -> bool:
    """`<ms>-<seq>` (or `<ms>`) as Redis stream ids are; anything else is refused (400)."""
    return _STREAM_ID.fullmatch(text) is not None


def line(ev: dict) -> str:
    """One human line for `tinytownd events`."""
    who = ev.get("agent_id", "")[:8]
    return f"{ev.get('timestamp', '?')}  {ev.get('event_type', '?'):<22} {who:<8}  " \
           f"{ev.get('message', '')}"
