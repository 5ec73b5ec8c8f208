"""The tag rule has one definition (store/fit.py) and one mirror in Lua (lua/claim_backlog.lua):
they must agree on every case."""
import json

import pytest

from tinytownd.store import fit, records
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

AGENT = {"role": "reviewer", "name": "rev-1", "tags": ["docs", "urgent"]}
# (raw tags field of the task, expected fit for AGENT)
CASES = [
    ("[]", True),                            # untagged: anyone
    ('["reviewer"]', True),                  # the role
    ('["role:reviewer"]', True),             # role:<role>
    ('["rev-1"]', True),                     # the agent's name
    ('["docs"]', True),                      # one of its tags
    ('["backend", "urgent"]', True),         # any one tag is enough
    ('["backend"]', False),
    ('["role:worker"]', False),
    ('["Reviewer"]', False),                 # case matters
    ('["role:"]', False),
    ('{"a": 1}', True),                      # not a JSON list: counts as untagged
    ("not json", True),
]


def _python(raw: str) -> bool:
    return fit.task_fits(records.decode_tags(raw), fit.agent_words(**AGENT))


@pytest.mark.parametrize("raw,expected", CASES)
def test_python_rule(raw, expected):
    assert _python(raw) is expected


def test_lua_claim_agrees_with_python(redis_server):
    r = redis_server.client()
    town = Town(r, Keys("fit"))
    k = town.keys
    aid = town.register_agent(AGENT["name"], role=AGENT["role"])
    for raw, expected in CASES:
        tid = town.create_task("t")
        r.hset(k.task(tid), "tags", raw)
        r.delete(k.backlog)
        r.rpush(k.backlog, tid)
        keys, args = town.claim_call(aid, fit.agent_words(**AGENT), 10)
        got = town.scripts.claim_backlog(keys=keys, args=args)[0]
        assert (got == tid) is expected is _python(raw), raw
        if got:   # the claim wrote exactly what tt's `backlog claim` sends
            msg = r.lpop(k.inbox(aid))
            assert json.loads(msg)["task_id"] == tid
            assert msg == records.task_assign_json(aid, tid, mid=json.loads(msg)["id"],
                                                   created_at=json.loads(msg)["created_at"])


def test_role_rule():
    assert fit.role_matches({"role_id": "test"}, "tester")
    assert fit.role_matches({"role_id": "audit"}, "review")
    assert not fit.role_matches({"role_id": "backend"}, "frontend")
    assert fit.role_matches({"name": "api-server-2"}, "backend")      # no role: the name
    assert not fit.role_matches({"name": "w1"}, "backend")
    assert fit.role_tags(["a"], "x") == ["a", "role:x"]
    assert fit.role_tags(["role:x"], "x") == ["role:x"]
