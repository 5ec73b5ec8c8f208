"""Writing back what was read: values that are not UTF-8 go back to Redis as the bytes they were.

The clients read with errors="surrogateescape" (daemon/redis_clients.py), so a value somebody
wrote as arbitrary bytes arrives as text with surrogate escapes. hiredis packs text as strict
UTF-8 and would refuse such a value when it is used in a command (a key built from it, an LREM
of it). Both packers here try hiredis first and, only on that refusal, send the text as its
original bytes: the normal path costs nothing more.
"""
from __future__ import annotations

import hiredis
from redis.connection import HiredisRespSerializer


def _escaped(args) -> tuple:
    return tuple(a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args)


def pack(cmd) -> bytes:
    """One command in the Redis protocol (for hiredis-packed writes of our own)."""
    try:
        return hiredis.pack_command(cmd)
    except UnicodeEncodeError:
        return hiredis.pack_command(_escaped(cmd))


class EscapingPacker(HiredisRespSerializer):
    """redis-py's hiredis packer, with the same fallback (connection kwarg command_packer)."""

    def pack(self, *args):
        try:
            return super().pack(*args)
        except UnicodeEncodeError:
            return super().pack(*_escaped(args))
