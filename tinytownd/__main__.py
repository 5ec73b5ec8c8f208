"""Entry point. Order matters: detach before gevent exists, patch before anything imports socket:

    parse argv  →  [daemonize with python-daemon]  →  gevent.monkey.patch_all()  →  import & run

Nothing above `main()` may import gevent, redis or structlog.
"""
from __future__ import annotations

import importlib
import sys


def main(argv: list[str] | None = None) -> int:
    from tinytownd.cli import build_parser

    args = build_parser().parse_args(argv)
    if getattr(args, "daemonize", False):
        from tinytownd.daemon.daemonize import detach

        detach(args)  # forks; only the detached grandchild returns
    from gevent import monkey

    monkey.patch_all()
    module, _, func = args.handler.partition(":")
    handler = getattr(importlib.import_module(module), func)
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
