"""/api/events: the town stream (tt:<town>:events) as Server-Sent Events.

Each subscriber blocks in XREAD on a connection of a pool of its own (never the agents' pools),
from its Last-Event-ID or, without one, from now (`?last=N` first replays the newest N). The
number of subscribers is bounded (http.max_sse_subscribers); beyond it a 503.
"""
from __future__ import annotations

import gevent
import redis

from . import feed

BLOCK_MS = 5_000             # an XREAD waits this long before a keep-alive comment (a client
                             # that went away is noticed at the second write after it left)
READ_COUNT = 200
MAX_REPLAY = 1000


class Subscribers:
    def __init__(self):
        self.count = 0

    def try_add(self, limit: int) -> bool:
        if self.count >= limit:
            return False
        self.count += 1
        return True

    def remove(self) -> None:
        self.count -= 1


def stream(r: redis.Redis, key: str, *, start: str | None, replay: int,
           agents: set[str] | None, mission: str | None, stopping, on_close):
    """The response body: a generator of SSE frames until the client or the daemon goes."""
    try:
        yield b"retry: 2000\n\n"
        last = start
        if last is None:           # from now: the newest id (not "$", which moves between reads)
            newest = r.xrevrange(key, count=max(1, min(replay, MAX_REPLAY)))
            last = newest[0][0] if newest else "0-0"
            if replay:
                yield frames(list(reversed(newest)), agents, mission)
        while not stopping.is_set():
            try:
                res = r.xread({key: last}, count=READ_COUNT, block=BLOCK_MS)
            except (redis.ConnectionError, redis.TimeoutError):
                yield b": redis unavailable, retrying\n\n"
                gevent.sleep(1.0)
                continue
            if not res:
                yield b": keep-alive\n\n"
                continue
            for _key, entries in res:
                if entries:
                    last = entries[-1][0]
                    out = frames(entries, agents, mission)
                    if out:
                        yield out              # one write per XREAD, not one per event
    finally:
        on_close()


def frames(entries, agents: set[str] | None, mission: str | None) -> bytes:
    """The SSE frames of `entries` that pass the filter, as one chunk."""
    if agents is None and mission is None:
        return "".join(feed.sse_frame(eid, f) for eid, f in entries).encode()
    out = []
    for eid, fields in entries:
        if feed.may_match(fields, agents=agents, mission=mission) and \
                feed.matches(feed.decode(eid, fields), agents=agents, mission=mission):
            out.append(feed.sse_frame(eid, fields))
    return "".join(out).encode()
