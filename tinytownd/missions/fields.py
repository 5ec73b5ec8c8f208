"""Reading and writing the fields of tt's mission JSON records.

The readers accept what tt's serde reader accepts (any RFC 3339 offset, any UUID spelling) and
raise ValueError naming the field when tt would refuse the record: a missing required field, an
unknown enum string, a wrong type. The writer side is `write_ts` (`Z` timestamps, as serde writes
them); records are encoded with store.records.dumps. Pure.
"""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

from tinytownd.store.wire import json_ts, parse_ts

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
JSON_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def write_ts(dt: datetime | None) -> str | None:
    return None if dt is None else json_ts(dt)


def read_object(raw: Any) -> dict:
    """A record as a dict, from JSON text or an already decoded object."""
    if isinstance(raw, (str, bytes)):
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object")
    return raw


def read_ts(v: Any, name: str, optional: bool = False) -> datetime | None:
    if v is None:
        if optional:
            return None
        raise ValueError(f"missing field `{name}`")
    if type(v) is str and len(v) > 20 and v[-1] == "Z" and v[10] == "T":
        try:  # what tinytownd and tt write: fromisoformat reads Z and 9 fraction digits
            return datetime.fromisoformat(v)
        except ValueError:
            pass
    try:
        return parse_ts(v)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: {e}") from None


def read_required(d: dict, name: str) -> Any:
    if name not in d:
        raise ValueError(f"missing field `{name}`")
    return d[name]


def read_enum(d: dict, name: str, allowed: tuple[str, ...]) -> str:
    v = read_required(d, name)
    if v not in allowed:
        raise ValueError(f"{name}: unknown variant {v!r}, expected one of {', '.join(allowed)}")
    return v


def read_uuid(v: Any, name: str, optional: bool = False) -> str | None:
    """The canonical (lowercase, hyphenated) form of a UUID field."""
    if v is None and optional:
        return None
    if type(v) is str and UUID_RE.match(v):
        return v
    if not isinstance(v, str):
        raise ValueError(f"{name}: expected a UUID string, got {v!r}")
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise ValueError(f"{name}: invalid UUID {v!r}") from None


def read_uint(d: dict, name: str, hi: int, default: int | None = None) -> int:
    v = d.get(name, default) if default is not None else read_required(d, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > hi:
        raise ValueError(f"{name}: expected an unsigned integer, got {v!r}")
    return v


def read_bool(d: dict, name: str, default: bool | None = None) -> bool:
    v = d.get(name, default) if default is not None else read_required(d, name)
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected a boolean, got {v!r}")
    return v


def read_str(d: dict, name: str, optional: bool = False) -> str | None:
    v = d.get(name) if optional else read_required(d, name)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{name}: expected a string, got {v!r}")
    return v


def read_str_list(d: dict, name: str) -> list[str]:
    v = read_required(d, name)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{name}: expected a list of strings")
    return list(v)
