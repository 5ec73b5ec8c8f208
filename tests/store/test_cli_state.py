"""An agent CLI's town-wide state (store/cli_state.py, lua/cli_rate_limited.lua) on a real
redis-server: exponential cooldowns with jitter and a cap, a named wait exactly, a rate limit
during a cooldown only extends it, pauses, resume."""
from __future__ import annotations

from tinytownd.store.cli_state import CliState
from tinytownd.store.keys import Keys


def _ended(r, key):
    """As if the cooldown had just ended (Redis clock)."""
    sec, usec = r.time()
    r.hset(key, "cooldown_until", sec * 1000 + usec // 1000 - 1)


def _rl(st, named=None, jitter=0.0):
    return st.rate_limited("c", cooldown_s=10, cooldown_max_s=35, named_s=named,
                           reason="429", jitter=jitter)


def test_levels_cap_named_and_extension(redis_server):
    r = redis_server.client()
    st = CliState(r, Keys("cs"))
    key = Keys("cs").cli("c")
    got = _rl(st)
    assert got["set"] and got["level"] == 1 and got["until_ms"] - got["now_ms"] == 10_000
    again = _rl(st)                          # during the cooldown: no new level
    assert not again["set"] and again["until_ms"] == got["until_ms"]
    longer = _rl(st, named=60)               # ... unless the output names a longer wait
    assert longer["set"] and longer["until_ms"] - longer["now_ms"] == 60_000
    waits = []
    for _ in range(4):                       # each new cooldown after the last one ended
        _ended(r, key)
        g = _rl(st)
        waits.append(g["until_ms"] - g["now_ms"])
    assert waits == [20_000, 35_000, 35_000, 35_000]    # doubling, capped at cooldown_max_s
    _ended(r, key)
    g = _rl(st, jitter=0.2)
    assert 35_000 <= g["until_ms"] - g["now_ms"] <= 42_000
    _ended(r, key)
    g = _rl(st, named=7)
    assert g["until_ms"] - g["now_ms"] == 7000
    r.hset(key, mapping={"cooldown_until": 1, "cooldown_level": 5})   # long quiet: level 1
    g = _rl(st)
    assert g["level"] == 1


def test_pause_describe_resume(redis_server):
    r = redis_server.client()
    st = CliState(r, Keys("cs2"))
    st.pause("c", "Invalid API key " + "x" * 1000)
    d = st.read(["c", "other"])
    assert d["c"]["paused"] and len(d["c"]["paused_reason"]) == 500
    assert d["other"] == {"cli": "other"}
    assert st.clear_pauses(["c", "other"]) == ["c"]
    _rl(st)
    was = st.resume("c")
    assert was["cooldown_left_s"] > 0 and st.read(["c"])["c"] == {"cli": "c"}
