"""Fixtures of the workspace tests: a git repository in the test's temp dir, and in-process
runtimes whose agents run in worktree mode on it."""
import pytest

from tests.support.gitrepo import make_repo
from tests.support.runtime import Harness, write_config


@pytest.fixture
def repo(tmpdir_short):
    return make_repo(tmpdir_short / "repo")


@pytest.fixture
def ws_harness(redis_server, tmpdir_short):
    """make(agents, clis, **config) → a started Harness (its town root under the temp dir)."""
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
