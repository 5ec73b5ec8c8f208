"""Quarantine of keys of the wrong Redis type: what is moved away, and what never is.

Two readers can meet the same wrong-typed key at once (the mission engine's lease round and a
mission being created both read the active set). The one that moves it away second must not
delete the key the first has meanwhile re-created with the right type and filled."""
import json

import redis

from tinytownd.store import quarantine
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


def _town(redis_server) -> Town:
    return Town(redis_server.client(), Keys("q"))


def test_a_wrong_typed_key_is_dead_lettered_with_its_content(redis_server):
    town = _town(redis_server)
    key = town.keys.missions_active
    town.r.xadd(key, {"f": "poison"})
    moved = quarantine.quarantine(town, {key: "set", town.keys.notify + ":x": "list"})
    assert moved == [key] and not town.r.exists(key)
    (entry,) = [json.loads(e) for e in town.r.lrange(town.keys.deadletter, 0, -1)]
    assert entry["reason"] == "key holds a stream, not a set" and entry["source"] == key
    assert "poison" in entry["raw"]


def test_a_key_repaired_meanwhile_is_left_alone(redis_server, monkeypatch):
    """Just before the delete is sent, another reader quarantines the key and re-creates it as a
    set holding a mission: that set survives, and nothing is dead-lettered twice."""
    town = _town(redis_server)
    key = town.keys.missions_active
    town.r.xadd(key, {"f": "poison"})
    other = redis_server.client()
    execute = redis.client.Pipeline.execute

    def repair_first(self, *a, **kw):
        deletes = [c for c, _o in self.command_stack if c[0] == "DEL" and c[1] == key]
        if deletes and other.type(key) == "stream":
            other.delete(key)
            other.sadd(key, "mission-1")
        return execute(self, *a, **kw)
    monkeypatch.setattr(redis.client.Pipeline, "execute", repair_first)
    quarantine.quarantine(town, {key: "set"})
    assert town.r.smembers(key) == {"mission-1"}
    assert town.r.llen(town.keys.deadletter) == 0


def test_races_let_a_few_unexplained_wrongtypes_pass_not_an_endless_run():
    races = quarantine.Races()
    assert all(races.tolerate([]) for _ in range(quarantine.RACES_IN_A_ROW))
    assert not races.tolerate([])                       # one more: not a race, a bug
    assert races.tolerate(["k"]) and races.tolerate([])  # a key moved starts the count again
