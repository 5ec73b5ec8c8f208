"""`status --town` rows: any registry hash (a client may write junk there) gives a row, never a
crash; junk keys under daemon:* are skipped."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tinytownd.commands import town_status
from tinytownd.store.keys import Keys


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["pid", "host", "agents", "heartbeat", "started_at",
                                        "version", "primary", "x"]),
                       st.text(max_size=30), max_size=8))
def test_any_registry_hash_gives_a_row(h):
    row = town_status.entry("i", h, 1e9)
    assert row["instance"] == "i"
    assert row["pid"] is None or isinstance(row["pid"], int)
    assert row["agents"] is None or all(isinstance(a, str) for a in row["agents"])
    assert isinstance(town_status.render("t", [row]), str)


def test_rows_from_redis_skip_junk(redis_server):
    r = redis_server.client()
    k = Keys("t")
    r.hset(k.daemon("a1"), mapping={"pid": "12", "host": "h1", "agents": json.dumps(["w-1"]),
                                    "heartbeat": "2026-01-01T00:00:00Z"})
    r.set(k.daemon("junk"), "not a hash")
    rows = town_status.daemons(r, k)
    assert [(x["instance"], x["host"], x["pid"], x["agents"]) for x in rows] == \
        [("a1", "h1", 12, ["w-1"])]
    assert rows[0]["heartbeat_age_s"] > 0
