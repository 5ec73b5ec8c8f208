"""Bad mission records never hold a mission (or the engine) up: an unreadable entry goes to the
dead-letter list and leaves its hash, an unreadable mission record is dead-lettered and dropped,
a mission key of the wrong type is quarantined — and the other missions go on."""
import json

from tests.support.missions import DIAMOND, ONE_ITEM, mission_state, wait_for


def dead(env):
    return [json.loads(x) for x in env.r.lrange(env.keys.deadletter, 0, -1)]


def test_unreadable_entries_are_dead_lettered_and_the_mission_completes(env):
    env.agent("w1")
    env.engine()
    c = env.start(DIAMOND)
    mid, k = c.mission.id, env.keys
    env.r.hset(k.mission_work(mid), "bogus", '{"id": ' + "[" * 50_000)
    env.r.hset(k.mission_control(mid), "bad-note", "not json")
    env.r.hset(k.mission_watch(mid), "bad-watch", '{"id": 3}')
    wait_for(lambda: mission_state(env.r, k, mid) == "completed", what="completion")
    by_field = {e.get("field"): e for e in dead(env)}
    assert by_field["bogus"]["source"] == k.mission_work(mid)
    assert by_field["bad-note"]["source"] == k.mission_control(mid)
    assert by_field["bad-watch"]["source"] == k.mission_watch(mid)
    assert not env.r.hexists(k.mission_work(mid), "bogus")


def test_an_unreadable_mission_record_is_dropped_not_retried_for_ever(env):
    env.agent("w1")
    h = env.engine()
    bad = env.start(ONE_ITEM)
    env.r.set(env.keys.mission(bad.mission.id), "{not a mission")
    good = env.start(ONE_ITEM)
    wait_for(lambda: mission_state(env.r, env.keys, good.mission.id) == "completed",
             what="the good mission")
    wait_for(lambda: not env.r.sismember(env.keys.missions_active, bad.mission.id), 10,
             what="the bad mission out of the active set")
    assert any(e["source"] == env.keys.mission(bad.mission.id) for e in dead(env))
    assert h.engine.errors.get(bad.mission.id, 0) <= 1


def test_a_mission_key_of_the_wrong_type_is_quarantined(env):
    env.agent("w1")
    env.engine()
    bad = env.start(ONE_ITEM)
    env.r.delete(env.keys.mission_control(bad.mission.id))
    env.r.rpush(env.keys.mission_control(bad.mission.id), "a list, not a hash")
    good = env.start(ONE_ITEM)
    wait_for(lambda: mission_state(env.r, env.keys, good.mission.id) == "completed",
             what="the good mission")
    wait_for(lambda: mission_state(env.r, env.keys, bad.mission.id) == "completed", 20,
             what="the mission whose control hash was a list")
    assert any(e["source"] == env.keys.mission_control(bad.mission.id)
               and e["reason"] == "key holds a list, not a hash" for e in dead(env))
