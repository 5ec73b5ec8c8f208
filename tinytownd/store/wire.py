"""Tinytown's wire encodings: ids, the two timestamp spellings, and the enum strings.

Everything tinytownd writes into a town must parse under `tt`'s rules:
  * ids are lowercase hyphenated UUID v4 text;
  * hash fields carry RFC 3339 UTC with `+00:00`; JSON carries the same instant with `Z`;
  * a timestamp without an offset is invalid (tt rejects a whole JSON message for it);
  * enum values are the lowercase serde strings below; event old/new states use the capitalised
    Debug form (`Working`).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

SUPERVISOR_ID = "00000000-0000-0000-0000-000000000001"
RESERVED_AGENT_NAMES = frozenset({"supervisor", "conductor"})

AGENT_STATES = ("cold", "starting", "idle", "working", "paused", "draining", "stopped", "error")
AGENT_TERMINAL = frozenset({"stopped", "error", "cold"})
AGENT_TYPES = ("supervisor", "worker")
SPAWN_MODES = ("fresh", "forkedcontext", "resumed")
TASK_STATES = ("pending", "assigned", "running", "completed", "failed", "cancelled")
TASK_TERMINAL = frozenset({"completed", "failed", "cancelled"})
PRIORITIES = ("low", "normal", "high", "urgent")
CONFIRMATION_TYPES = ("received", "acknowledged", "thanks", "approved", "rejected")
BUILTIN_ROLES = ("default", "worker", "reviewer", "researcher", "runner")

# Message `type` tag → the variant's required fields (tt's serde enum, flattened).
MESSAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "task": ("description",),
    "query": ("question",),
    "informational": ("summary",),
    "confirmation": ("ack_type",),
    "task_assign": ("task_id",),
    "task_done": ("task_id", "result"),
    "task_failed": ("task_id", "error"),
    "status_request": (),
    "status_response": ("state", "current_task"),
    "ping": (),
    "pong": (),
    "shutdown": (),
    "custom": ("kind", "payload"),
}

EVENT_TYPES = (
    "agent_state_changed", "agent_spawned", "agent_stopped", "task_assigned", "task_completed",
    "task_failed", "mission_state_changed", "mission_work_promoted", "mission_work_assigned",
    "mission_work_completed", "mission_work_blocked", "mission_help_needed",
    "mission_watch_triggered", "mission_event", "task_delegated", "agent_interrupted",
    "agent_resumed", "agent_completed", "agent_failed", "reviewer_handoff", "reviewer_approval",
    "conductor_escalation",
)


def new_id() -> str:
    """A fresh UUID v4 in tt's canonical text form."""
    return str(uuid.uuid4())


def canonical_id(text: str) -> str:
    """Parse any UUID spelling tt accepts and return the lowercase hyphenated form.

    Raises ValueError for anything that is not a UUID.
    """
    return str(uuid.UUID(text.strip()))


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text.strip())
    except (ValueError, AttributeError):
        return False
    return True


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def hash_ts(dt: datetime | None = None) -> str:
    """RFC 3339 UTC with `+00:00`, as chrono's to_rfc3339() writes hash fields."""
    if dt is None:
        return datetime.now(timezone.utc).isoformat()
    return dt.astimezone(timezone.utc).isoformat()


def json_ts(dt: datetime | None = None) -> str:
    """RFC 3339 UTC with `Z`, as serde writes chrono timestamps in JSON."""
    return hash_ts(dt).replace("+00:00", "Z")


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 timestamp as tt does: an offset is required.

    Accepts `Z` and `+HH:MM`, 0–9 fraction digits. Raises ValueError for naive or malformed text.
    """
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp has no UTC offset: {text!r}")
    return dt.astimezone(timezone.utc)


def debug_state(state: str) -> str:
    """Rust's Debug form of an AgentState (`working` → `Working`), used in event old/new states."""
    return state[:1].upper() + state[1:]
