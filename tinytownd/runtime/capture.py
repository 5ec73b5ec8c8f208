"""A round's output: read from the CLI's stdout/stderr pipe into a round log of bounded size.

The log keeps the first `head_max` bytes as they come and the last `tail_max` bytes in memory;
what falls between is dropped and counted, and the log ends with
`[tinytownd: N bytes of output dropped]` and the tail. No file exists for a round that printed
nothing (a new file that persists costs far more than the pipe). A write that fails (a full
disk) stops the log, not the round: the output is still read and the tail still kept.
"""
from __future__ import annotations

import errno
import os
import time

import gevent
from gevent.socket import wait_read

READ_CHUNK = 65536


class CappedLog:
    def __init__(self, path: str, head_max: int, tail_max: int, result_max: int,
                 observer=None):
        """`observer(data)`: also given every chunk (a structured-output parser)."""
        self.path = path
        self.head_max = head_max
        self.tail_max = tail_max
        self.result_max = result_max
        self.total = 0              # bytes the CLI wrote
        self.written = 0            # bytes in the file's head
        self.ring = bytearray()     # the tail beyond the head (at most tail_max)
        self.last = bytearray()     # the last result_max bytes of all output (the result)
        self.fd: int | None = None
        self.on_disk = 0            # bytes written to the file
        self.error: str | None = None
        self.last_output = time.monotonic()
        self.observer = observer

    def _open(self) -> bool:
        if self.fd is None and self.error is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            try:
                try:
                    self.fd = os.open(self.path, flags, 0o644)
                except FileNotFoundError:       # the log directory is made on first use
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                    self.fd = os.open(self.path, flags, 0o644)
            except (OSError, ValueError) as e:
                self.error = f"cannot write round log {self.path}: {getattr(e, 'strerror', e)}"
        return self.fd is not None

    def _write(self, data) -> None:
        if not self._open():
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                self.on_disk += n
                view = view[n:]
        except OSError as e:
            self.error = f"cannot write round log {self.path}: {e.strerror}"

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.last_output = time.monotonic()
        if self.observer is not None:
            self.observer(data)
        if self.result_max:
            self.last += data[-self.result_max:]
            if len(self.last) > self.result_max:
                del self.last[:len(self.last) - self.result_max]
        room = self.head_max - self.written
        if room > 0:
            head = data[:room]
            self._write(head)
            self.written += len(head)
            data = data[room:]
        if data:
            self.ring += data[-self.tail_max:] if self.tail_max else b""
            if len(self.ring) > self.tail_max:
                del self.ring[:len(self.ring) - self.tail_max]

    @property
    def dropped(self) -> int:
        return self.total - self.written - len(self.ring)

    def close(self) -> None:
        if self.ring:
            if self.dropped:
                self._write(f"\n[tinytownd: {self.dropped} bytes of output dropped]\n".encode())
            self._write(self.ring)
            self.ring = bytearray()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def result(self) -> str:
        """The output tail as text (whole lines when possible)."""
        text = bytes(self.last).decode("utf-8", errors="replace")
        if self.total > len(self.last) and "\n" in text[:-1]:
            text = text[text.index("\n") + 1:]
        return text.strip()


def pump(fd: int, log: CappedLog) -> None:
    """Read the CLI's output pipe until EOF (every writer gone), then close the log. Runs in its
    own greenlet: the round may end first (the CLI's leftovers still hold the pipe open)."""
    try:
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                wait_read(fd)
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                break
            if not data:
                break
            log.feed(data)
    except gevent.GreenletExit:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
        log.close()
