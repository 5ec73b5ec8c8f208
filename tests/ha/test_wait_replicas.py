"""redis.wait_replicas: the writes that carry work are WAITed for; with 1, no task whose
creation was acknowledged (WAIT reached the replica) is lost across 5 kill -9 failovers. A WAIT
that gets fewer replicas is counted and logged, the write stands."""
import gevent
import redis

from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.sentinel import FAST_RUNTIME, agent_cli, agent_log, master_client, retrying
from tinytownd.store.durability import Durability
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town


def test_a_short_wait_is_counted_and_logged_and_the_write_stands(redis_server):
    logged = []

    class Log:
        def warning(self, msg, **kw):
            logged.append((msg, kw))
    dur = Durability(1, 5, Log())            # a lone server: no replica ever has the write
    town = Town(redis_server.client(), Keys("w"), durability=dur)
    tids = [town.backlog_add(f"t{i}") for i in range(5)]
    assert all(town.get_task(t)["state"] == "pending" for t in tids)
    assert town.r.llen(town.keys.backlog) == 5
    assert dur.waits == 5 and dur.short == 5 and dur.min_seen == 0
    assert len(logged) == 1 and logged[0][1]["wanted"] == 1      # one line per LOG_EVERY_S
    # a send_raw transaction (assign_many) is WAITed for too
    aid = town.register_agent("x")
    town.assign_many([{"aid": aid, "description": "d"}])
    assert dur.waits > 5


def test_no_acknowledged_task_creation_is_lost_across_5_kill9_failovers(ha, tmpdir_short):
    work = tmpdir_short / "work"
    d = DaemonProcess(tmpdir_short / "d", redis=ha.config(wait_replicas=1, wait_timeout_ms=500),
                      runtime=FAST_RUNTIME,
                      agent_clis={"c": {"command": agent_cli(work, 0.01), "max_attempts": 10}},
                      agents=[{"name": "w", "role": "worker", "cli": "c", "count": 8}])
    dur = Durability(1, 500)
    town = Town(master_client(ha), Keys("t"), durability=dur)
    acked, unacked, errors = [], 0, []
    stop = gevent.event.Event()

    def producer():
        nonlocal unacked
        i = 0
        while not stop.is_set():
            before = (dur.short, dur.errors)
            try:
                tid = town.backlog_add(f"p{i}")
            except (redis.RedisError, OSError) as e:
                errors.append(type(e).__name__)
                unacked += 1
                gevent.sleep(0.05)
                continue
            i += 1
            if (dur.short, dur.errors) == before:
                acked.append(tid)               # WAIT said the replica has it
            else:
                unacked += 1
            gevent.sleep(0.01)
    try:
        d.start()
        g = gevent.spawn(producer)
        for _ in range(5):
            n = len(acked)
            wait_for(lambda: len(acked) > n + 40, 60, what="acknowledged tasks")
            ha.kill_primary()
        stop.set()
        g.get(timeout=30)
        assert ha.failovers == 5
        k = town.keys

        def lost():
            p = town.r.pipeline(transaction=False)
            for t in acked:
                p.hget(k.task(t), "state")
            states = p.execute()
            return [t for t, s in zip(acked, states) if s is None]
        assert retrying(lost) == []
        # and they all run to completion (at-least-once)

        def done():
            p = town.r.pipeline(transaction=False)
            for t in acked:
                p.hget(k.task(t), "state")
            return all(s == "completed" for s in p.execute())
        wait_for(lambda: retrying(done), 180, interval=0.3, what="acknowledged tasks completed")
        starts, violations = agent_log(work)
        assert violations == []
        wait = retrying(d.status)["components"]["runtime"]["wait"]
        assert wait["replicas"] == 1 and wait["waits"] > 0
        print(f"acked {len(acked)} unacked {unacked} daemon waits {wait} {dur.status()} "
              f"{sorted(set(errors))} {len(errors)}")
        assert set(retrying(d.status)["services"].values()) == {"running"}
        assert d.stop() == 0
    finally:
        stop.set()
        d.cleanup()
