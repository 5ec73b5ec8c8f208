"""Fixtures of the runtime tests: in-process runtimes on the test's redis-server."""
import pytest

from tests.support.runtime import Harness, write_config


@pytest.fixture
def harness(redis_server, tmpdir_short):
    """make(agents, clis, root_name=None, start=True, **config) → a Harness (stopped after)."""
    made = []

    def make(agents, clis, *, root_name=None, start=True, **kw):
        root = tmpdir_short / (root_name or f"town{len(made)}")
        root.mkdir(exist_ok=True)
        h = Harness(write_config(root, redis_server.url, agents=agents, clis=clis, **kw))
        made.append(h)
        return h.start() if start else h

    yield make
    for h in made:
        try:
            h.stop()
        except Exception:
            pass
