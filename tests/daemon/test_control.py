"""The control socket: permissions, protocol errors survived, commands."""
from __future__ import annotations

import json
import os
import socket
import stat

from tinytownd.daemon import control


def _conv(path, *payloads: bytes) -> list[dict]:
    """Send raw bytes on one connection; return the replies (one JSON line each)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    f = s.makefile("rb")
    out = []
    try:
        for p in payloads:
            s.sendall(p)
            line = f.readline()
            if not line:
                break
            out.append(json.loads(line))
    finally:
        s.close()
    return out


def test_control_socket_permissions_and_garbage(daemon):
    daemon.start()
    path = daemon.control_sock
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)

    replies = _conv(path, b"this is not json\n", b"[1, 2]\n", b'{"cmd": 42}\n',
                    b'{"cmd": "launch-missiles"}\n', b'{"cmd": "status", "args": [1]}\n',
                    b'{"cmd": "log-level", "args": {"level": "loud"}}\n',
                    b'\xff\xfe\n', b'{"cmd": "ping", "id": 7}\n')
    assert [r["ok"] for r in replies] == [False] * 7 + [True]
    assert replies[0]["code"] == "bad_request"
    assert replies[3]["code"] == "unknown_command" and "ping" in replies[3]["error"]
    assert replies[-1]["pong"] is True and replies[-1]["id"] == 7

    # oversized: an error reply, then the connection is closed; the daemon lives on
    big = b'{"cmd": "ping", "pad": "' + b"x" * (control.MAX_LINE + 10) + b'"}\n'
    replies = _conv(path, big)
    assert replies and replies[0]["ok"] is False and replies[0]["code"] == "too_large"

    # a client that connects and goes away mid-line
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(b'{"cmd": "sta')
    s.close()

    assert daemon.request("ping")["ok"] is True
    helps = daemon.request("help")["commands"]
    for cmd in ("ping", "status", "reload", "stop", "log-level", "reopen-logs", "help"):
        assert cmd in helps
    assert daemon.request("log-level", {"level": "debug"})["level"] == "debug"
    assert daemon.status()["log_level"] == "debug"
    assert daemon.request("log-level")["level"] == "debug"
    assert daemon.request("reopen-logs")["ok"] is True
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_client_errors_when_not_running(tmpdir_short):
    try:
        control.request(tmpdir_short / "none.sock", "ping")
    except control.NotRunning as e:
        assert "none.sock" in str(e)
    else:
        raise AssertionError("expected NotRunning")


def test_bind_refuses_live_socket_and_clears_stale(tmpdir_short):
    path = tmpdir_short / "c.sock"
    live = control.bind_socket(path)
    try:
        try:
            control.bind_socket(path)
        except control.SocketInUse:
            pass
        else:
            raise AssertionError("expected SocketInUse")
    finally:
        live.close()
    # now nobody listens: the stale file is replaced
    s = control.bind_socket(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s.close()


def test_many_idle_connections_and_deep_json_leave_status_working(daemon):
    """500 connections held open idle do not keep a new request from an answer (the longest
    idle is closed at the limit), and JSON nested too deep is a bad request, not a hang."""
    daemon.start()
    path = str(daemon.control_sock)
    held = []
    try:
        for _ in range(500):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        assert daemon.request("status", timeout=5)["state"] == "running"
        assert _conv(path, b"[" * 200_000 + b"\n")[0]["code"] == "bad_request"
        assert daemon.request("ping", timeout=5)["ok"] is True
    finally:
        for s in held:
            s.close()
    assert daemon.proc.poll() is None
