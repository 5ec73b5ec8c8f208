"""tt sees the same records as before the Redis command reduction (issue 14): the normalized
snapshot of every tt key after a small workload (bench/tt_records.py) equals the one the code at
reliability-core 61d39cb wrote (tests/batch/data/tt_records_reliability_core.json, made with that
checkout's venv: `python bench/tt_records.py`). With runtime.task_events lifecycle the event
streams hold the same events (their interleaving with the dispatcher's depends on timing); with
the default (none) they hold only the agent's own start events, and everything else is the same."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import tt_records  # noqa: E402

BEFORE = json.loads((Path(__file__).parent / "data" / "tt_records_reliability_core.json")
                    .read_text())


def _split(snap):
    streams = {k: v for k, v in snap.items() if v["type"] == "stream"}
    return {k: v for k, v in snap.items() if k not in streams}, streams


@pytest.mark.parametrize("events", ["lifecycle", "none"])
def test_tt_visible_records_are_unchanged(events):
    after = tt_records.snapshot(events)
    records_before, streams_before = _split(BEFORE)
    records_after, streams_after = _split(after)
    assert tt_records.diff(records_before, records_after) == []
    assert set(streams_after) == set(streams_before)
    for key, s in streams_after.items():
        got = sorted(json.dumps(e, sort_keys=True) for e in s["value"])
        if events == "lifecycle":
            assert got == sorted(json.dumps(e, sort_keys=True)
                                 for e in streams_before[key]["value"]), key
        else:
            assert {e["event_type"] for e in s["value"]} == {"agent_spawned",
                                                             "agent_state_changed"}, key
