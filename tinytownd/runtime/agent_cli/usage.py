"""What a round cost: tokens, dollars, turns, model and session, as the CLI reports them.

A usage is a plain dict with some of USAGE_COUNTS (summed over rounds and attempts), cost_usd
(summed) and USAGE_LABELS (the last one wins). `from_file` reads what a CLI wrote to
$TINYTOWN_USAGE_FILE: a JSON object with `input_tokens`, `output_tokens`, `cost_usd`, `model`
(and optionally `cached_tokens`, `cache_write_tokens`, `turns`, `session_id`); anything else in
it, or a value out of bounds, is left out and named.
"""
from __future__ import annotations

import json
import math
import os

USAGE_COUNTS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "turns")
USAGE_LABELS = ("model", "session_id")
USAGE_FIELDS = USAGE_COUNTS + ("cost_usd",) + USAGE_LABELS
MAX_COUNT = 10 ** 12          # tokens or turns of one round
MAX_COST_USD = 10 ** 6        # dollars of one round
MAX_LABEL = 200               # characters of a model name or session id
USAGE_FILE_MAX = 65536        # bytes of $TINYTOWN_USAGE_FILE read


def clean(raw: dict) -> tuple[dict, list[str]]:
    """The known fields of `raw` that are in bounds, and the problems with the others."""
    out: dict = {}
    problems: list[str] = []
    for k, v in raw.items():
        if k in USAGE_COUNTS:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_COUNT:
                problems.append(f"{k}: not an integer in 0..{MAX_COUNT}")
            elif v:
                out[k] = v
        elif k == "cost_usd":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0 <= v <= MAX_COST_USD:
                problems.append(f"{k}: not a number in 0..{MAX_COST_USD}")
            elif v:
                out[k] = float(v)
        elif k in USAGE_LABELS:
            if not isinstance(v, str) or len(v) > MAX_LABEL:
                problems.append(f"{k}: not a string of at most {MAX_LABEL} characters")
            elif v:
                out[k] = v
        else:
            problems.append(f"{str(k)[:40]}: unknown field")
    return out, problems


def merge(a: dict, b: dict) -> dict:
    """Two usages of one round (the output's and the usage file's) as one."""
    if not a or not b:
        return a or b
    out = dict(a)
    for k, v in b.items():
        out[k] = v if k in USAGE_LABELS else out.get(k, 0) + v
    return out


def from_file(path: str) -> tuple[dict, list[str]] | None:
    """Read and remove the usage file; None when the CLI wrote none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, USAGE_FILE_MAX + 1)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
    if len(data) > USAGE_FILE_MAX:
        return {}, [f"larger than {USAGE_FILE_MAX} bytes"]
    try:
        raw = json.loads(data)
    except ValueError as e:
        return {}, [f"not JSON: {e}"]
    if not isinstance(raw, dict):
        return {}, ["not a JSON object"]
    return clean(raw)


def usage_view(h: dict) -> dict:
    """Usage sums read from a hash (strings) as numbers; fields never written are left out."""
    out: dict = {}
    for k, v in h.items():
        if v in (None, ""):
            continue
        try:
            out[k] = round(float(v), 6) if k == "cost_usd" else int(float(v))
        except ValueError:
            if k in USAGE_LABELS:
                out[k] = v
    return out
