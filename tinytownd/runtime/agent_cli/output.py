"""Structured output of agent CLIs (`agent_clis.*.output`), read as it arrives.

  claude-json  `claude -p --output-format json` prints one result object: {"type": "result",
               "subtype", "is_error", "result", "num_turns", "session_id", "total_cost_usd",
               "usage": {input_tokens, output_tokens, cache_read_input_tokens,
               cache_creation_input_tokens}, "modelUsage": {model: ...}}. The last line that is
               such an object counts (stream-json's last line is the same object), so warnings
               the CLI prints on stderr before it do no harm.
  codex-jsonl  `codex exec --json` prints one event per line: thread.started {thread_id},
               turn.completed {usage: {input_tokens, cached_input_tokens, output_tokens}},
               turn.failed {error: {message}}, error {message}, item.completed {item: {type:
               "agent_message", text}}. The result is the last agent message; the usage of
               every turn.completed is summed; a turn.failed, or an error event after which no
               turn completed, fails the round with its message.

A collector is fed every chunk of output (capture.CappedLog's observer) and parsed once at the
end; `Parsed.problem` says why output did not parse as its format (the round then fails).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import usage as usage_mod

KEPT_BYTES = 16 << 20        # claude-json: the output's end kept for the result object
LINE_MAX = 16 << 20          # codex-jsonl: a longer line is skipped
AGENT_MESSAGE = ("agent_message", "assistant_message")   # item types (the second: codex 0.4x)


@dataclass
class Parsed:
    result: str = ""                 # the answer (ok) or the error text (is_error)
    is_error: bool = False           # the CLI reported a failure in its structured output
    usage: dict = field(default_factory=dict)
    problem: str | None = None       # the output is not of its format: why


def _first_bytes(data: bytes) -> str:
    text = data.strip()[:120].decode("utf-8", "replace")
    return repr(text) if text else "no output"


class ClaudeJson:
    """Keeps the end of the output; `parse` finds the last result object in it."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > KEPT_BYTES:
            del self.buf[:len(self.buf) - KEPT_BYTES]

    def parse(self) -> Parsed:
        data = bytes(self.buf)
        obj = _last_result(data)
        if obj is None:
            return Parsed(problem=f"output is not claude-json: no result object ({_first_bytes(data)})")
        res = obj.get("result")
        if not isinstance(res, str):
            res = "" if res is None else json.dumps(res, ensure_ascii=False)
        is_error = obj.get("is_error") is True or (obj.get("subtype") not in (None, "success"))
        if is_error and not res:
            errs = obj.get("errors")
            res = "; ".join(str(e) for e in errs) if isinstance(errs, list) and errs else \
                f"claude reported {obj.get('subtype') or 'an error'}"
        raw = {}
        u = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        for src, dst in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                         ("cache_read_input_tokens", "cached_tokens"),
                         ("cache_creation_input_tokens", "cache_write_tokens")):
            if src in u:
                raw[dst] = u[src]
        for src, dst in (("total_cost_usd", "cost_usd"), ("num_turns", "turns"),
                         ("session_id", "session_id")):
            if src in obj and obj[src] is not None:
                raw[dst] = obj[src]
        models = obj.get("modelUsage")
        if isinstance(models, dict) and models:
            raw["model"] = next(iter(models))
        elif isinstance(obj.get("model"), str):
            raw["model"] = obj["model"]
        used, _problems = usage_mod.clean(raw)
        return Parsed(result=res, is_error=is_error, usage=used)


def _is_result(obj) -> bool:
    return isinstance(obj, dict) and obj.get("type") == "result"


def _last_result(data: bytes) -> dict | None:
    text = data.strip()
    if text[:1] in (b"{", b"["):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if _is_result(obj):
            return obj
        if isinstance(obj, list):        # --verbose: an array of events, the result last
            return next((o for o in reversed(obj) if _is_result(o)), None)
    for line in reversed(text.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if _is_result(obj):
            return obj
    return None


class CodexJsonl:
    """Reads events line by line as they come; only the state the verdict needs is kept."""

    def __init__(self):
        self.partial = bytearray()
        self.events = 0
        self.message: str | None = None
        self.failure: str | None = None       # turn.failed / error, until a turn completes
        self.failed_turn = False
        self.counts = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "turns": 0}
        self.thread: str | None = None

    def feed(self, data: bytes) -> None:
        self.partial += data
        if b"\n" not in data:
            if len(self.partial) > LINE_MAX:
                self.partial.clear()
            return
        *lines, rest = self.partial.split(b"\n")
        self.partial = bytearray(rest)
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"{"):
            return
        try:
            ev = json.loads(line)
        except ValueError:
            return
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
            return
        self.events += 1
        t = ev["type"]
        if t == "item.completed":
            item = ev.get("item")
            if isinstance(item, dict) and isinstance(item.get("text"), str) and \
                    (item.get("type") or item.get("item_type")) in AGENT_MESSAGE:
                self.message = item["text"]
        elif t == "turn.completed":
            self.counts["turns"] += 1
            self.failure = None if not self.failed_turn else self.failure
            u = ev.get("usage")
            if isinstance(u, dict):
                for src, dst in (("input_tokens", "input_tokens"),
                                 ("cached_input_tokens", "cached_tokens"),
                                 ("output_tokens", "output_tokens")):
                    v = u.get(src)
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                        self.counts[dst] += v
        elif t == "turn.failed":
            self.failed_turn = True
            err = ev.get("error")
            self.failure = (err.get("message") if isinstance(err, dict) else None) or \
                "codex reported turn.failed"
        elif t == "error":
            self.failure = str(ev.get("message") or "codex reported an error")
        elif t == "thread.started" and isinstance(ev.get("thread_id"), str):
            self.thread = ev["thread_id"]

    def parse(self) -> Parsed:
        if self.partial:
            rest, self.partial = bytes(self.partial), bytearray()
            self._line(rest)
        if not self.events:
            return Parsed(problem="output is not codex-jsonl: no JSON event lines")
        raw = {k: v for k, v in self.counts.items() if v}
        if self.thread:
            raw["session_id"] = self.thread
        used, _problems = usage_mod.clean(raw)
        if self.failure is not None:
            return Parsed(result=self.failure, is_error=True, usage=used)
        return Parsed(result=self.message or "", usage=used)


COLLECTORS = {"claude-json": ClaudeJson, "codex-jsonl": CodexJsonl}


def collector(fmt: str):
    """A fresh collector for output format `fmt`; None for `text` (nothing to parse)."""
    cls = COLLECTORS.get(fmt)
    return cls() if cls is not None else None
