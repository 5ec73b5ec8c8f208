"""The daemon's Redis pools, against a real redis-server started by the test."""
import redis

from tinytownd import __version__
from tinytownd.daemon import redis_clients


def test_connections_name_tinytownd_and_skip_the_per_connection_version_lookup(redis_server,
                                                                               monkeypatch):
    """Both pools' connections carry one DriverInfo made at import (CLIENT SETINFO lib-name
    `redis-py(tinytownd_v…)` on Redis >= 7.2; 7.0 refuses SETINFO and redis-py ignores that):
    redis-py 8 would otherwise read its own version through importlib.metadata for every new
    connection (~0.6 ms each; 1,000 parked agents open 1,000)."""
    looked_up = []
    import redis.utils
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: looked_up.append(1) or real())
    for blocking in (False, True):
        pool = redis_clients.make_pool(redis_server.url, max_connections=4, blocking=blocking)
        c = redis.Redis(connection_pool=pool)
        try:
            assert c.ping()
            conn = pool.get_connection()
            try:
                assert conn.driver_info.formatted_name == f"redis-py(tinytownd_v{__version__})"
                assert conn.driver_info.lib_version == redis.__version__
            finally:
                pool.release(conn)
        finally:
            c.close()
            pool.disconnect()
    assert looked_up == []
