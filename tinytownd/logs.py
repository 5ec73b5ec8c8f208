"""structlog JSON logging: one JSON object per line, on stdout or a file.

* Every line has `timestamp` (ISO-8601 UTC, `Z`), `level`, `event`, `logger`, plus context bound with
  `structlog.contextvars` (`town`, `agent`, `task`, `mission`). Greenlets start with an empty context,
  so workers bind theirs at the top of their run function.
* The level lives in a mutable filter, not in a cached wrapper class, so `log-level` and reload take
  effect at once for loggers that already exist.
* The sink can be reopened (SIGUSR1 / `reopen-logs`) for logrotate.
* Records from the stdlib `logging` module (redis-py, gevent, python-daemon) go through the same chain.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _State:
    level = LEVELS["info"]
    path: str | None = None
    stream: TextIO = sys.stdout
    owns_stream = False
    lock = threading.Lock()
    configured = False
    journal = False          # stdout is the journal: lines get a <N> priority prefix


def _filter_level(logger: Any, method: str, event: dict) -> dict:
    if LEVELS.get(method if method != "exception" else "error", 20) < _State.level:
        raise structlog.DropEvent
    return event


def _rename_level(logger: Any, method: str, event: dict) -> dict:
    if method == "exception":
        event["level"] = "error"
    elif "level" not in event:
        event["level"] = "warning" if method == "warn" else method
    return event


class _SinkLogger:
    """structlog's final logger: writes one line per event to the current sink."""

    def msg(self, line: str) -> None:
        with _State.lock:
            try:
                _State.stream.write(line + "\n")
                _State.stream.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must not take the daemon down

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _logger_factory(*args: Any) -> _SinkLogger:
    return _SinkLogger()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return repr(obj)


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))


def _dumps(obj: Any, **kw: Any) -> str:
    return _ENCODER.encode(obj)


class _StdlibBridge(logging.Handler):
    """Forwards stdlib logging records into the structlog chain."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger().bind(logger=record.name)
            method = record.levelname.lower()
            kw: dict[str, Any] = {}
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            getattr(log, method if method in LEVELS else "info")(record.getMessage(), **kw)
        except Exception:  # pragma: no cover
            self.handleError(record)


# journald priorities (sd-daemon(3) `<N>` prefixes): `journalctl -p err` shows errors.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _stdout_is_journal() -> bool:
    """$JOURNAL_STREAM names the journal's stream as `dev:inode`; it is ours only when stdout is
    that very file (a child that redirected stdout must not prefix its lines)."""
    ident = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = ident.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _render(logger: Any, method: str, event: dict) -> str:
    line = _ENCODER.encode(event)
    if _State.journal and _State.path is None:
        return f"<{PRIORITY.get(event.get('level'), 6)}>{line}"
    return line


def configure(level: str = "info", file: str | None = None) -> None:
    """Set up structlog and route stdlib logging through it. Safe to call again (reload)."""
    set_level(level)
    open_sink(file)
    _State.journal = _stdout_is_journal()
    if _State.configured:
        return
    structlog.configure(
        processors=[
            _filter_level,                      # first: a filtered event costs nothing more
            structlog.contextvars.merge_contextvars,
            _rename_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.dict_tracebacks,
            _render,
        ],
        logger_factory=_logger_factory,
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_StdlibBridge())
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _State.configured = True


def set_level(level: str) -> None:
    lv = level.lower()
    if lv not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    _State.level = LEVELS[lv]


def get_level() -> str:
    return next(k for k, v in LEVELS.items() if v == _State.level)


def open_sink(file: str | os.PathLike | None) -> None:
    """Switch the sink to `file` (append) or stdout. Also used to reopen the same file."""
    with _State.lock:
        new: TextIO
        if file is None:
            new, owns = sys.stdout, False
        else:
            os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
            new, owns = open(file, "a", buffering=1, encoding="utf-8"), True
        old, old_owned = _State.stream, _State.owns_stream
        _State.stream, _State.owns_stream = new, owns
        _State.path = str(file) if file is not None else None
    if old_owned and old is not new:
        try:
            old.close()
        except OSError:
            pass


def reopen() -> None:
    """logrotate support: reopen the current log file (no-op on stdout)."""
    if _State.path:
        open_sink(_State.path)


def get_logger(name: str, **context: Any) -> structlog.BoundLogger:
    return structlog.get_logger().bind(logger=name, **context)


def current_path() -> str | None:
    """The log file written now (None: stdout)."""
    return _State.path
