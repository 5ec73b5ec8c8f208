"""The GC settling of a running daemon (runtime/gc_tuning.py) and the heartbeat spacing."""
import gc

from hypothesis import given, strategies as st

from tinytownd.runtime import gc_tuning
from tinytownd.runtime.agents_service import BEAT_CHUNK, BEAT_GAP_S, BEAT_SPREAD, beat_gap


def test_should_settle_once_all_started():
    assert not gc_tuning.should_settle(3, 4, None, None, 100.0)      # one still starting
    assert gc_tuning.should_settle(4, 4, None, None, 100.0)
    assert not gc_tuning.should_settle(4, 4, 4, 100.0, 500.0)        # same count: done
    assert not gc_tuning.should_settle(0, 0, None, None, 100.0)      # no agents
    assert not gc_tuning.should_settle(6, 6, 4, 100.0, 130.0)        # added, but too soon
    assert gc_tuning.should_settle(6, 6, 4, 100.0, 100.0 + gc_tuning.SETTLE_MIN_GAP_S)


@given(st.integers(0, 5000), st.integers(0, 5000), st.one_of(st.none(), st.integers(0, 5000)),
       st.floats(0, 1e6), st.floats(0, 1e6))
def test_should_settle_never_with_agents_starting(started, total, count, last, now):
    if gc_tuning.should_settle(started, total, count, last, now):
        assert total > 0 and started >= total and count != total


class _W:
    def __init__(self, state):
        self.state = state


def test_settler_freezes_then_release_unfreezes():
    gc.unfreeze()
    s = gc_tuning.Settler()
    s.poll([_W("starting"), _W("idle")])
    assert s.count is None and gc.get_freeze_count() == 0
    keep = [object() for _ in range(10)] + [[] for _ in range(100)]
    s.poll([_W("idle"), _W("working")])
    try:
        assert s.count == 2 and gc.get_freeze_count() > 100
        at = s.at
        s.poll([_W("idle"), _W("working")])      # nothing changed: no second settle
        assert s.at == at
    finally:
        gc_tuning.release()
    assert gc.get_freeze_count() == 0
    del keep


@given(st.integers(0, 20000), st.floats(0.1, 10))
def test_beat_gap_keeps_a_pass_within_its_share_of_the_interval(agents, interval):
    gap = beat_gap(agents, interval)
    chunks = (agents + BEAT_CHUNK - 1) // BEAT_CHUNK
    assert 0 <= gap <= BEAT_GAP_S
    assert gap * max(0, chunks - 1) <= interval * BEAT_SPREAD + 1e-9
    if chunks <= 1:
        assert gap == 0
