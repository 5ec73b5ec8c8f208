"""The commands the control socket answers (control.py is the socket; this is what it says)."""
from __future__ import annotations

import os

from tinytownd import logs

from .status import status

DOCS = {
    "ping": "liveness: {pong, pid}",
    "status": "daemon, redis, services and component status",
    "reload": "re-read the config file: validate, diff, apply; lists changes and restart-only keys",
    "stop": "stop the daemon; args {graceful: true|false}",
    "log-level": "get or set the log level; args {level: debug|info|warning|error|critical}",
    "reopen-logs": "reopen the log file (logrotate)",
    "help": "this list",
}


def handlers(d) -> dict:
    """name → handler(args) -> reply, for daemon `d`."""
    def ping(args):
        return {"pong": True, "pid": os.getpid()}

    def stop(args):
        graceful = args.get("graceful", True) is not False
        d.request_stop(graceful=graceful)
        return {"stopping": True, "graceful": graceful, "pid": os.getpid()}

    def log_level(args):
        level = args.get("level")
        if level is not None:
            try:
                logs.set_level(str(level))
            except ValueError as e:
                return {"ok": False, "code": "bad_request", "error": str(e)}
            d.log.info("log level changed", level=logs.get_level())
        return {"level": logs.get_level()}

    def reopen(args):
        d.reopen_logs()
        return {"reopened": logs.current_path()}

    return {"ping": ping, "status": lambda args: status(d), "reload": lambda args: d.reload(),
            "stop": stop, "log-level": log_level, "reopen-logs": reopen}
