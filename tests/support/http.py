"""Plain HTTP clients for the listener tests (stdlib only: what is tested is the server)."""
from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

from .daemon import DaemonProcess, free_port

QUICK_CLI = {"quick": {"command": "echo working on it; sleep 0.3; echo done"}}


def web_daemon(root, *, agents=2, http=None, cli=None, **sections) -> DaemonProcess:
    """A daemon config with the listener on a free loopback port and `agents` quick agents."""
    port = free_port()
    # the event feed is what these tests watch: the per-task events on (the default is none)
    runtime = {"task_events": "lifecycle", **sections.pop("runtime", {})}
    return DaemonProcess(root, runtime=runtime, http={"listen": f"127.0.0.1:{port}", **(http or {})},
                         agent_clis=cli or QUICK_CLI,
                         agents=[{"name": "w", "cli": next(iter(cli or QUICK_CLI)),
                                  "count": agents}] if agents else [],
                         **sections)


def base_url(d: DaemonProcess) -> str:
    return f"http://{d.data['http']['listen']}"


def get(d_or_url, path: str = "/", *, headers=None, timeout=10.0, method="GET", body=None):
    """(status, headers dict (lower-case names), body bytes)."""
    url = d_or_url if isinstance(d_or_url, str) else base_url(d_or_url)
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def get_json(d, path: str, **kw):
    status, _h, body = get(d, path, **kw)
    return status, json.loads(body)


def raw(d: DaemonProcess, data: bytes, timeout=5.0) -> bytes:
    """Send raw bytes, read until the server closes (or `timeout`)."""
    host, port = d.data["http"]["listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


class SSEClient:
    """A minimal Server-Sent Events reader on a raw socket."""

    def __init__(self, d: DaemonProcess, path="/api/events", headers=None, timeout=10.0):
        host, port = d.data["http"]["listen"].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                          f"{hdrs}\r\n".encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.chunked = b"chunked" in head.lower()
        self.text = ""

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _fill_text(self) -> None:
        """Decode chunked transfer encoding into self.text."""
        while True:
            if not self.chunked:
                self.text += self.buf.decode()
                self.buf = b""
                return
            if b"\r\n" not in self.buf:
                return
            size_line, _, rest = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self.text += rest[:size].decode()
            self.buf = rest[size + 2:]

    def events(self, n: int, timeout: float = 15.0) -> list[dict]:
        """The next `n` events (id + parsed data)."""
        import time
        out = []
        end = time.monotonic() + timeout
        while len(out) < n:
            self._fill_text()
            while "\n\n" in self.text and len(out) < n:
                frame, _, self.text = self.text.partition("\n\n")
                ev = {}
                for line in frame.split("\n"):
                    if line.startswith("id: "):
                        ev["id"] = line[4:]
                    elif line.startswith("data: "):
                        ev["data"] = json.loads(line[6:])
                if "data" in ev:
                    out.append(ev)
            if len(out) >= n:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"got {len(out)} of {n} events")
            self.sock.settimeout(max(0.1, end - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        return out

    def close(self) -> None:
        self.sock.close()
