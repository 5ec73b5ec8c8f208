"""The mission engine fixture: a town on the test's redis-server, engines and agent doubles."""
import pytest

from tests.support.missions import EngineHandle, FakeAgent
from tinytownd.missions.compile import compile_text
from tinytownd.missions.storage import MissionStore
from tinytownd.store.keys import Keys
from tinytownd.store.town import Town

TOWN = "mt"


@pytest.fixture
def env(redis_server):
    r = redis_server.client()
    keys = Keys(TOWN)
    town = Town(r, keys)
    store = MissionStore(r, keys)
    handles, agents = [], []

    class Env:
        pass
    e = Env()
    e.r, e.keys, e.town, e.store, e.url = r, keys, town, store, redis_server.url
    e.agents = agents

    def engine(run=True, **kw):
        h = EngineHandle(redis_server.url, TOWN, run=run, **kw)
        handles.append(h)
        return h

    def agent(*a, **kw):
        ag = FakeAgent(town, *a, **kw)
        agents.append(ag)
        return ag

    def start(text, path="<test>"):
        c = compile_text(text, path)
        store.create(c.mission, c.items, c.cmd_watches, c.meta, c.log)
        return c
    e.engine, e.agent, e.start = engine, agent, start
    try:
        yield e
    finally:
        for ag in agents:
            ag.stop()
        for h in handles:
            h.stop()
