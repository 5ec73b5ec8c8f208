"""Ranking agents for a work item (scoring.py)."""
from __future__ import annotations

from tinytownd.missions import scoring
from tests.support.missions import agent_record as agent


def test_role_routing_tables():
    tester, backend, rev = agent("tester", "tester"), agent("backend-worker"), agent("x", "review")
    assert scoring.base_score("implement", None, backend) > scoring.base_score("implement", None,
                                                                              tester)
    assert scoring.base_score("review", "reviewer", rev) == 120
    assert scoring.base_score("implement", None, rev) == 0
    assert scoring.base_score("review", "backend", agent("a", "audit")) == 120
    assert scoring.base_score("test", "tester", tester) == 100
