"""Fixtures of the runtime tests: in-process runtimes on the test's redis-server."""
import pytest

from tests.support.runtime import harnesses


@pytest.fixture
def harness(redis_server, tmpdir_short):
    """make(agents, clis, root_name=None, start=True, **config) → a Harness (stopped after)."""
    with harnesses(redis_server.url, tmpdir_short) as make:
        yield make
