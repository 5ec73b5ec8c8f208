"""The class of a failed round, and the wait a rate-limit message names (pure).

  error         today's failure: retried with backoff within max_attempts
  timeout       the round ran past timeout_s, or its output stopped growing for
                inactivity_timeout_s: retried like an error
  rate_limited  exit 75 (EX_TEMPFAIL) or output matching rate_limit_patterns: the task goes back
                without using an attempt and the CLI cools down
  fatal         exit 78 (EX_CONFIG) or output matching fatal_patterns: the task fails at once
                and the CLI is paused for the town

Explicit exit codes win; then fatal patterns (a CLI that cannot work must not wait for ever in
cooldowns), then rate-limit patterns.
"""
from __future__ import annotations

import functools
import re
from datetime import datetime, timezone

EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
CLASSES = ("error", "timeout", "rate_limited", "fatal")
MAX_RETRY_AFTER_S = 86400.0


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]):
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def _matching_line(text: str, patterns) -> str | None:
    rx = _compiled(tuple(patterns))
    if rx is None:
        return None
    m = rx.search(text)
    if m is None:
        return None
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start:end if end >= 0 else len(text)].strip()[:300] or m.group(0)


def classify(*, exit_code: int | None, timed_out: bool, text: str, rate_limit_patterns=(),
             fatal_patterns=()) -> tuple[str, str | None]:
    """(class, the line that decided it, if a pattern did)."""
    if timed_out:
        return "timeout", None
    if exit_code == EXIT_TEMPFAIL:
        return "rate_limited", None
    if exit_code == EXIT_CONFIG:
        return "fatal", None
    line = _matching_line(text, fatal_patterns)
    if line is not None:
        return "fatal", line
    line = _matching_line(text, rate_limit_patterns)
    if line is not None:
        return "rate_limited", line
    return "error", None


_UNIT_S = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60,
           "min": 60, "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
           "hrs": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}
_UNIT = r"(ms|secs?|seconds?|s|mins?|minutes?|m|hours?|hrs?|h|days?|d)(?![a-z])"
_AFTER = re.compile(r"(?:retry|try again)[- _]?(?:after|in)\s*[:=]?\s*"
                    r"((?:\d+(?:\.\d+)?\s*" + _UNIT + r"[\s,]*(?:and\s+)?)+|\d+(?:\.\d+)?)",
                    re.IGNORECASE)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*" + _UNIT, re.IGNORECASE)
_RESET_ISO = re.compile(r"reset[s]?\s*(?:at|on)?\s*[:=]?\s*(\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?"
                        r"(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)", re.IGNORECASE)
_RESET_EPOCH = re.compile(r"(?:limit reached\||reset[s]?\s*(?:at)?\s*[:=]?\s*)(\d{10})\b",
                          re.IGNORECASE)


def retry_after_s(text: str, now: float) -> float | None:
    """Seconds to wait that `text` names ("retry after 7 seconds", "try again in 1m30s",
    "Try again in 4 days 20 hours 9 minutes", "Retry-After: 20" (seconds), "resets at
    2026-12-02T05:00:00Z", "usage limit reached|1764651600"), at most a day; None when it names
    none. `now`: the current time (epoch seconds)."""
    m = _AFTER.search(text)
    if m:
        parts = _PART.findall(m.group(1))
        secs = sum(float(n) * _UNIT_S[u.lower()] for n, u in parts) if parts else \
            float(m.group(1))
        return min(secs, MAX_RETRY_AFTER_S)
    m = _RESET_ISO.search(text)
    if m:
        raw = m.group(1).replace(" ", "T").replace("Z", "+00:00")
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            at = None
        if at is not None:
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            return max(0.0, min(at.timestamp() - now, MAX_RETRY_AFTER_S))
    m = _RESET_EPOCH.search(text)
    if m:
        return max(0.0, min(int(m.group(1)) - now, MAX_RETRY_AFTER_S))
    return None
