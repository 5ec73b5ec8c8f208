"""A mission's cost budget (policy `max_cost_usd`), pure.

The mission file's `policy: {max_cost_usd: X}` is kept in the mission's daemon meta (tt's policy
record has no such field), where the runtime also sums the cost its agent CLIs report for the
mission's tasks (`cost_usd`, written at each round's end). Once the sum reaches the budget the
tick blocks the mission with the reason: no new task is assigned, running ones finish and are
reconciled when it runs again (a resume with a raised budget: `max_cost_usd` in the meta).
"""
from __future__ import annotations

import math

META_BUDGET = "max_cost_usd"
META_SPENT = "cost_usd"
MAX_BUDGET_USD = 1e6
REASON_PREFIX = "Cost budget reached"


def parse_budget(raw, problems: list[str]) -> float | None:
    """policy.max_cost_usd of a mission file: a number in (0, MAX_BUDGET_USD], or absent."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) \
            or not 0 < raw <= MAX_BUDGET_USD:
        problems.append(f"policy.max_cost_usd: must be a number in (0, {MAX_BUDGET_USD:g}]")
        return None
    return float(raw)


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def over_budget(meta_get) -> str | None:
    """The blocked reason when the mission spent its budget, else None. `meta_get(key)`: the
    mission meta's value (junk in either field means no budget check, never a crash)."""
    budget = _num(meta_get(META_BUDGET))
    if budget is None or budget <= 0:
        return None
    spent = _num(meta_get(META_SPENT)) or 0.0
    if spent < budget:
        return None
    return (f"{REASON_PREFIX}: ${spent:.4f} spent of max_cost_usd {budget:g}; no new tasks "
            "(raise max_cost_usd, then resume)")
