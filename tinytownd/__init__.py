"""tinytownd: a supervised, Redis-backed runtime for Tinytown towns.

Importing this package imports nothing heavy: the entry point (`tinytownd.__main__`) must be able to
daemonize and monkey-patch gevent before redis, structlog or gevent-using modules are loaded.
"""

__version__ = "0.1.0"
