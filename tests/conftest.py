# gevent must patch before anything else imports socket/ssl/threading (in-process runtime tests).
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

import pytest  # noqa: E402

# Test daemons do not open the HTTP listener (127.0.0.1:8474) unless their config sets
# http.listen: many run at once, and other test runs share the machine.
os.environ.setdefault("TINYTOWND_HTTP_LISTEN", "off")

from tests.support.daemon import DaemonProcess  # noqa: E402
from tests.support.helpers import RedisServer, short_tmpdir  # noqa: E402


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


@pytest.fixture
def daemon(tmpdir_short):
    """A daemon process (`tinytownd run`) configured in a temp dir; killed with whatever it left."""
    d = DaemonProcess(tmpdir_short)
    try:
        yield d
    finally:
        d.cleanup()


# The system-level tests (scripts/test-system, after the main suite in CI): real Sentinel
# failovers, the fault suite, a real browser, multi-daemon kill -9 of missions; and, marked
# `@pytest.mark.system` where they stand, the other tests of two daemon processes on one town.
SYSTEM_TESTS = ("/tests/ha/", "/tests/faults/", "/tests/http/test_dashboard_browser.py",
                "/tests/missions/test_mission_daemon.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(p in str(item.fspath) for p in SYSTEM_TESTS):
            item.add_marker(pytest.mark.system)
