"""Fixtures of the HA tests: a Sentinel-watched Redis (tests/support/sentinel.py)."""
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/ha/" in str(item.fspath):
            item.add_marker(pytest.mark.ha)
            item.add_marker(pytest.mark.system)

from tests.support.sentinel import HaRedis


@pytest.fixture
def ha(tmpdir_short):
    """One primary, one replica, three Sentinels on loopback ports; all stopped afterwards."""
    h = HaRedis(tmpdir_short / "ha")
    try:
        yield h.start()
    finally:
        h.stop()
