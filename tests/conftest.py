# gevent must patch before anything else imports socket/ssl/threading (in-process runtime tests).
from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402

from tests.helpers import RedisServer, short_tmpdir, run_cli  # noqa: E402,F401


@pytest.fixture
def tmpdir_short():
    """A short temp dir (unix socket paths must stay under 107 bytes). Removed afterwards."""
    with short_tmpdir() as d:
        yield d


@pytest.fixture
def redis_server(tmpdir_short):
    """A private redis-server on a unix socket in a temp dir, stopped after the test."""
    srv = RedisServer(tmpdir_short / "redis")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
