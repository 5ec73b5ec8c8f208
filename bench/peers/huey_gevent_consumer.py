#!/usr/bin/env python3
"""huey_consumer that monkey-patches first, as huey's docs require for `-k greenlet`."""
from gevent import monkey

monkey.patch_all()

from huey.bin.huey_consumer import consumer_main  # noqa: E402

if __name__ == "__main__":
    consumer_main()
