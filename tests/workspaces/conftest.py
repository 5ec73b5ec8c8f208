"""Fixtures of the workspace tests: a git repository in the test's temp dir, and in-process
runtimes whose agents run in worktree mode on it."""
import pytest

from tests.support.gitrepo import make_repo
from tests.support.runtime import harnesses


@pytest.fixture
def repo(tmpdir_short):
    return make_repo(tmpdir_short / "repo")


@pytest.fixture
def ws_harness(redis_server, tmpdir_short):
    """make(agents, clis, **config) → a started Harness (its town root under the temp dir)."""
    with harnesses(redis_server.url, tmpdir_short) as make:
        yield make
