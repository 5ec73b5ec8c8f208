"""A mission's cost budget (policy max_cost_usd): compiled into the mission meta, bounded, and the
pure tick blocks the mission once its tasks' reported cost reaches it (running tasks finish;
nothing new is assigned; a finished mission still completes)."""
from __future__ import annotations

import pytest

from tinytownd.missions.compile import MissionFileError, compile_text
from tests.support.missions import TickSim

FILE = """
policy: {reviewer_required: false, max_parallel_items: 1, max_cost_usd: 2.5}
work_items: [{id: a, title: A}, {id: b, title: B}, {id: c, title: C}]
"""


def test_budget_in_meta_and_bounded():
    assert compile_text(FILE, "<t>").meta["max_cost_usd"] == "2.5"
    assert "max_cost_usd" not in compile_text(FILE.replace(", max_cost_usd: 2.5", ""),
                                              "<t>").meta
    for bad in ("0", "-1", "true", "'x'", "1e9", ".nan"):
        with pytest.raises(MissionFileError) as e:
            compile_text(FILE.replace("2.5", bad), "<t>")
        assert "policy.max_cost_usd" in str(e.value)


def test_tick_blocks_the_mission_at_the_budget():
    s = TickSim(FILE)
    s.tick()
    (t,) = s.live()
    s.meta["cost_usd"] = "1.0"             # as round_ok.lua sums it
    s.finish(t["id"])
    s.tick()
    (t2,) = s.live()
    assert s.m.state == "running"
    s.meta["cost_usd"] = "2.75"            # the second task's round passed the budget
    s.finish(t2["id"])
    out = s.tick()
    assert s.m.state == "blocked" and s.m.blocked_reason.startswith("Cost budget reached")
    assert "$2.7500 spent of max_cost_usd 2.5" in s.m.blocked_reason
    assert not s.live() and not out.new_tasks
    assert any("Cost budget reached" in x for x in out.log)
    s.tick()
    assert not s.live()                     # stays blocked, nothing new
    s.meta["max_cost_usd"] = "10"           # raised, then resumed
    from tinytownd.missions.mission import MissionControlMessage
    s.controls.append(MissionControlMessage.new(s.m.id, "conductor", "resume"))
    s.tick()
    assert s.m.state == "running" and len(s.live()) == 1


def test_junk_budget_fields_are_no_budget():
    s = TickSim(FILE)
    s.meta["max_cost_usd"] = "lots"
    s.meta["cost_usd"] = "999"
    s.tick()
    assert s.m.state == "running" and len(s.live()) == 1


def test_a_mission_whose_last_task_passes_the_budget_completes():
    s = TickSim(FILE.replace("[{id: a, title: A}, {id: b, title: B}, {id: c, title: C}]",
                             "[{id: a, title: A}]"))
    s.tick()
    (t,) = s.live()
    s.meta["cost_usd"] = "5"
    s.finish(t["id"])
    s.tick()
    assert s.m.state == "completed"


def test_engine_blocks_at_the_budget_and_mission_status_shows_it(env, tmp_path):
    """The engine with an agent whose rounds cost $1 each (as round_ok.lua adds it to the
    mission meta): after the budget of 2.5 the mission is blocked with the reason, the third
    item is never assigned, and `mission status` prints the usage and the budget."""
    import json

    from tests.support.helpers import run_cli, wait_for
    from tests.support.missions import mission_state

    cfgp = tmp_path / "t.yaml"
    cfgp.write_text(f"town: {{name: mt, root: {tmp_path}}}\nredis: {{url: '{env.url}'}}\n")
    box = {}

    def behave(t):
        env.r.hincrbyfloat(env.keys.mission_meta(box["mid"]), "cost_usd", 1.25)
        return ("completed", "ok", 0)
    env.agent("w", behave=behave)
    env.engine()
    c = env.start(FILE)
    box["mid"] = mid = c.mission.id
    wait_for(lambda: mission_state(env.r, env.keys, mid) == "blocked", timeout=30,
             what="blocked at the budget")
    p = run_cli("mission", "status", mid, "--work", "--json", "-c", str(cfgp))
    st = json.loads(p.stdout)
    assert st["blocked_reason"].startswith("Cost budget reached")
    assert st["usage"]["cost_usd"] == 2.5 and st["max_cost_usd"] == 2.5
    assert sorted(w["status"] for w in st["work"]) == ["done", "done", "ready"]
    p = run_cli("mission", "status", mid, "-c", str(cfgp))
    assert "usage:      $2.5000" in p.stdout and "(budget $2.5)" in p.stdout
