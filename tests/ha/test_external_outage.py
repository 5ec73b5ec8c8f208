"""A single external Redis (redis.url, AOF appendfsync always) killed for 15 s under load and
started again: the daemon waits (one log line per state change, not per agent per second), says
it is not ready meanwhile, keeps the systemd watchdog fed, and resumes; nothing is lost."""
import json
import socket
import time

import gevent

from tests.support.daemon import DaemonProcess
from tests.support.helpers import wait_for
from tests.support.sentinel import FAST_RUNTIME, Node, agent_cli, agent_log, retrying
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

N_TASKS = 300
OUTAGE_S = 15.0


def test_external_redis_down_15s_under_load(tmpdir_short):
    node = Node(tmpdir_short / "redis", aof_always=True).start()
    work = tmpdir_short / "work"
    d = DaemonProcess(tmpdir_short / "d", redis={"url": f"redis://127.0.0.1:{node.port}"},
                      runtime=FAST_RUNTIME, daemon={"watchdog_stall_s": 3.0},
                      agent_clis={"c": {"command": agent_cli(work, 0.05), "max_attempts": 10}},
                      agents=[{"name": "w", "role": "worker", "cli": "c", "count": 8}])
    notify = str(tmpdir_short / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(notify)
    s.settimeout(0.5)
    pings: list[float] = []

    def listen():
        while True:
            try:
                if s.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except (socket.timeout, TimeoutError):
                pass
            except OSError:
                return
    g = gevent.spawn(listen)
    try:
        d.start(env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "1000000"})
        town = Town(node.client(), Keys("t"))
        wait_for(lambda: len([a for a in town.list_agents() if a.get("state") == "idle"]) == 8,
                 30, what="8 idle agents")
        tids = [town.backlog_add(f"t{i}") for i in range(N_TASKS)]

        def done():
            p = town.r.pipeline(transaction=False)
            for t in tids:
                p.hget(town.keys.task(t), "state")
            return sum(1 for x in p.execute() if x == "completed")
        wait_for(lambda: done() >= 30, 60, what="30 tasks done")
        lines_before = len(d.stdout_lines())
        node.kill()                                    # kill -9: AOF always has every write
        down_at = time.monotonic()
        st = wait_for(lambda: (lambda x: x if not x["ready"]["ready"] else None)(d.status()),
                      10, what="status: not ready")
        assert "Redis unreachable" in st["ready"]["reason"]
        gevent.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        # the watchdog was fed through the outage (stall window 3 s)
        during = [p for p in pings if down_at + 4 < p < down_at + OUTAGE_S]
        assert len(during) >= 5, (len(during), len(pings))
        st = d.status()
        assert set(st["services"].values()) == {"running"}, st["services"]
        outage_lines = [json.loads(x) for x in d.stdout_lines()[lines_before:]]
        warns = [x for x in outage_lines if x.get("level") in ("warning", "error")]
        # once per state change and service, not once per agent per second (8 agents x 15 s);
        # no "watchdog ping withheld"
        assert len(warns) <= 12, [w.get("event") for w in warns]
        assert not [w for w in warns if "watchdog" in w.get("event", "")], warns
        node.start()
        wait_for(lambda: d.status()["ready"]["ready"], 30, what="ready again")
        wait_for(lambda: retrying(done) == N_TASKS, 180, interval=0.3,
                 what="all tasks completed after the outage")
        starts, violations = agent_log(work)
        assert violations == [] and set(tids) <= set(starts)
        assert town.r.llen(town.keys.deadletter) == 0
        st = d.status()
        assert set(st["services"].values()) == {"running"}
        crashed = {n: x for n, x in st["service_details"].items() if x["restarts"]}
        assert not crashed, crashed
        print(f"warnings during the outage: {len(warns)}; reruns {sum(starts.values()) - N_TASKS}")
        assert d.stop() == 0
    finally:
        s.close()
        g.kill()
        d.cleanup()
        node.kill()
