"""The control socket: newline-delimited JSON over a unix stream socket.

Server (inside the daemon, gevent): `ControlServer(path, handlers, log).start()`.
* The socket is bound under umask 0o177 (no window before the chmod to 0600). An existing socket
  file is unlinked only after a connect() to it fails: a live one means another daemon runs
  (`SocketInUse`).
* Each connection: the peer's uid (SO_PEERCRED) must be ours or root; then any number of requests,
  one line each (at most MAX_LINE bytes), each answered by one line. Idle connections are closed
  after `timeout` seconds.
* Request `{"cmd": "status", "args": {...}, "id": 1}` → `{"ok": true, "id": 1, ...}` or
  `{"ok": false, "id": 1, "error": "...", "code": "..."}`. Malformed, unknown or oversized requests
  get an error reply; the daemon lives on.

Client (the CLI; stdlib only): `request(path, cmd, args)` → reply dict, or raises `NotRunning`
(nobody listens), `PermissionDenied` (the socket file or the daemon refused our uid), `NoReply`
(connected, but no answer in time) or `ControlError` (the conversation broke). Never a raw OSError.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any, Callable

MAX_LINE = 1 << 20   # 1 MiB
MAX_CONNECTIONS = 128


class SocketInUse(Exception):
    """Another live process answers on the control socket."""


class NotRunning(Exception):
    """No daemon answers on the control socket."""


class ControlError(Exception):
    """The daemon refused us or the conversation broke."""


class PermissionDenied(ControlError):
    """The control socket refused our uid (file mode 0600, or the daemon's SO_PEERCRED check)."""


class NoReply(ControlError):
    """Something listens on the control socket but did not answer in time."""


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def check_free(path: str | os.PathLike) -> None:
    """Raise SocketInUse if a live process listens on `path`; unlink a stale socket file."""
    path = os.fspath(path)
    if os.path.exists(path) or os.path.islink(path):
        if _alive(path):
            raise SocketInUse(f"control socket {path} is in use: another tinytownd is running")
        os.unlink(path)


def bind_socket(path: str | os.PathLike) -> socket.socket:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    check_free(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    except OSError:
        s.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(64)
    return s


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


Handler = Callable[[dict], dict]


class ControlServer:
    def __init__(self, path: str | os.PathLike, handlers: dict[str, Handler], log, *,
                 timeout: float = 60.0, docs: dict[str, str] | None = None):
        self.path = os.fspath(path)
        self.handlers = dict(handlers)
        self.docs = docs or {}
        self.handlers.setdefault("help", self._help)
        self.log = log
        self.timeout = timeout
        self._server = None
        self._sock: socket.socket | None = None
        self._open: dict = {}          # connection → when it was last used (time.monotonic())

    def start(self) -> None:
        from gevent.server import StreamServer

        self._sock = bind_socket(self.path)
        self._server = StreamServer(self._sock, self._handle)
        self._server.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        try:
            if self._sock is not None:
                os.unlink(self.path)
        except OSError:
            pass
        self._sock = None

    def _help(self, args: dict) -> dict:
        return {"commands": {name: self.docs.get(name, "") for name in sorted(self.handlers)}}

    def _make_room(self) -> None:
        """At MAX_CONNECTIONS, the connection idle the longest is closed: clients that hold
        connections open (or flood them) never keep a new `status` from being answered."""
        while len(self._open) >= MAX_CONNECTIONS:
            oldest = min(self._open, key=self._open.get)
            self._open.pop(oldest, None)
            try:
                oldest.close()
            except OSError:
                pass

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(self.timeout)
        self._make_room()
        self._open[conn] = time.monotonic()
        try:
            uid = peer_uid(conn)
            if uid not in (0, os.getuid()):
                self.log.warning("control connection refused", uid=uid)
                self._refuse(conn)
                return
            f = conn.makefile("rb")
            while True:
                line = f.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._send(conn, {"ok": False, "code": "too_large",
                                      "error": f"request over {MAX_LINE} bytes"})
                    return   # cannot find the next request boundary: hang up
                if not line.strip():
                    continue
                self._open[conn] = time.monotonic()
                self._send(conn, self._dispatch(line))
        except (socket.timeout, TimeoutError):
            return
        except OSError:
            return
        finally:
            self._open.pop(conn, None)
            try:
                conn.close()
            except OSError:
                pass

    def _dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "code": "bad_request", "error": f"not JSON: {e}"}
        except RecursionError:
            return {"ok": False, "code": "bad_request", "error": "not JSON: nested too deep"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "code": "bad_request",
                    "error": 'expected an object like {"cmd": "status", "args": {}}'}
        rid = req.get("id")
        extra = {"id": rid} if rid is not None else {}
        cmd, args = req["cmd"], req.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "code": "bad_request", "error": "args must be an object", **extra}
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "code": "unknown_command", **extra,
                    "error": f"unknown command {cmd!r}; try: {', '.join(sorted(self.handlers))}"}
        try:
            reply = handler(args)
        except Exception as e:
            self.log.error("control command failed", cmd=cmd, exc_info=True)
            return {"ok": False, "code": "error", "error": f"{type(e).__name__}: {e}", **extra}
        reply = dict(reply or {})
        reply.setdefault("ok", True)
        reply.update(extra)
        return reply

    def _refuse(self, conn: socket.socket) -> None:
        """Answer `noperm`, then read (and drop) what the peer sends for a moment before closing:
        closing a unix socket with unread data resets it, and the client would get ECONNRESET
        instead of the reply."""
        self._send(conn, {"ok": False, "error": "permission denied", "code": "noperm"})
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(1.0)
            got = 0
            while got <= MAX_LINE:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
                if chunk.endswith(b"\n"):
                    break
        except OSError:
            pass

    @staticmethod
    def _send(conn: socket.socket, obj: dict) -> None:
        conn.sendall(json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n")


# ----------------------------------------------------------------------------- client
def request(path: str | os.PathLike, cmd: str, args: dict | None = None, *,
            timeout: float | None = 60.0) -> dict:
    """One request, one reply. NotRunning when nobody listens; PermissionDenied when refused;
    NoReply when the daemon does not answer within `timeout`; ControlError when the conversation
    breaks."""
    path = os.fspath(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            raise NotRunning(f"no daemon answers on {path} ({e.strerror})") from None
        except PermissionError:
            raise PermissionDenied(f"permission denied on {path} (the control socket is only "
                                   "for the daemon's uid and root)") from None
        except (socket.timeout, TimeoutError):
            raise NoReply(f"{path}: the daemon did not accept the connection within "
                          f"{timeout}s") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        send_error = None
        try:
            s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        except (socket.timeout, TimeoutError):
            raise NoReply(f"{path}: the daemon did not take the request within {timeout}s") \
                from None
        except OSError as e:     # EPIPE/ECONNRESET: it hung up; its reason may still be readable
            send_error = e
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (socket.timeout, TimeoutError):
            raise NoReply(f"{path}: the daemon accepted the connection but did not answer "
                          f"within {timeout}s") from None
        except OSError as e:
            if not buf:
                err = send_error or e
                raise ControlError(f"{path}: the daemon closed the connection without a reply "
                                   f"({err.strerror or err})") from None
        if not buf:
            why = f" ({send_error.strerror or send_error})" if send_error else ""
            raise ControlError(f"{path}: the daemon closed the connection without a reply{why}")
        try:
            reply = json.loads(buf)
        except ValueError:
            raise ControlError(f"{path}: the reply is not JSON: {buf[:100]!r}") from None
        if not isinstance(reply, dict):
            raise ControlError(f"{path}: the reply is not a JSON object: {buf[:100]!r}")
        if reply.get("code") == "noperm":
            raise PermissionDenied(f"{path}: {reply.get('error')} (the daemon refuses our uid "
                                   f"{os.getuid()})")
        return reply
    finally:
        s.close()
