"""Hypothesis strategies for hostile input: Redis values (raw bytes), control-socket lines and
config files. Everything here produces bytes (or (kind, bytes) pairs), written as is with
decode_responses=False clients.

    from bench.faults import strategies as S
    S.hostile_bytes()            # invalid UTF-8, deep nesting, huge, empty, wrong JSON types ...
    S.hostile_message(aid)       # message-shaped JSON with some fields hostile
    S.hostile_hash_fields(names) # {field: hostile bytes} for a hash
    S.config_docs()              # YAML documents (bytes) built from the real schema's keys
"""
from __future__ import annotations

import json
import uuid

import yaml
from hypothesis import strategies as st

DEEP = (1000, 100_000)          # nesting depths (the brief's ~100k)
HUGE = (1 << 20, 4 << 20)       # value sizes for "huge" (1 MiB, 4 MiB)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def deep_json() -> st.SearchStrategy[bytes]:
    return st.builds(_deep, st.sampled_from(DEEP), st.sampled_from(("list", "dict")))


def huge() -> st.SearchStrategy[bytes]:
    return st.builds(lambda n, c: c * n, st.sampled_from(HUGE),
                     st.sampled_from((b"x", b"\xff", b"{")))


def invalid_utf8() -> st.SearchStrategy[bytes]:
    bad = st.sampled_from((b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80",
                           b"\x80", b"\x00"))
    return st.builds(lambda a, b, c: a + b + c, st.binary(max_size=16), bad, st.binary(max_size=16))


def json_scalar() -> st.SearchStrategy:
    return st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=30), st.just(""), st.just("\x00"), st.just("../../etc"))


def json_value() -> st.SearchStrategy:
    return st.recursive(json_scalar(), lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
        max_leaves=12)


def dumps(v) -> bytes:
    return json.dumps(v, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """Any value a key might hold that no writer of ours would put there."""
    return st.one_of(
        st.just(b""), invalid_utf8(), deep_json(), huge(), st.binary(max_size=64),
        json_value().map(dumps),
        st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.sampled_from((b"null", b"[]", b"{}", b"NaN", b"1e999", b"-0", b'"', b"\\", b"*",
                         b"tt:ft:*", b" " * 10)))


def _uuidish() -> st.SearchStrategy:
    return st.one_of(st.just(str(uuid.uuid4())), st.just("00000000-0000-0000-0000-000000000001"),
                     json_scalar(), st.just(str(uuid.uuid4()).upper()))


MESSAGE_TYPES = ("task", "query", "informational", "confirmation", "task_assign", "task_done",
                 "task_failed", "status_request", "status_response", "ping", "pong", "shutdown",
                 "custom")


@st.composite
def hostile_message(draw, to: str) -> bytes:
    """A message-shaped JSON object (valid-looking) with some fields missing or of the wrong type,
    or plain hostile bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(hostile_bytes())
    msg = {"id": str(uuid.uuid4()), "from": "00000000-0000-0000-0000-000000000001", "to": to,
           "type": draw(st.sampled_from(MESSAGE_TYPES)), "task_id": str(uuid.uuid4()),
           "description": "poison", "priority": "normal",
           "created_at": "2024-01-01T00:00:00Z", "correlation_id": None}
    for f in draw(st.lists(st.sampled_from(sorted(msg)), min_size=1, max_size=4, unique=True)):
        how = draw(st.integers(0, 3))
        if how == 0:
            del msg[f]
        elif how == 1:
            msg[f] = draw(json_value())
        elif how == 2:
            msg[f] = draw(st.sampled_from(("", "x" * 70000, "2024-01-01T00:00:00", "urgent!",
                                           "task_assign ", None, [], {})))
        else:
            msg[f] = draw(_uuidish())
    return dumps(msg)


@st.composite
def hostile_hash_fields(draw, names: tuple[str, ...], extra: int = 2) -> dict[bytes, bytes]:
    """Some of `names` (and a few unknown fields) set to hostile values."""
    picked = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    out = {n.encode(): draw(hostile_bytes()) for n in picked}
    for _ in range(draw(st.integers(0, extra))):
        out[draw(st.binary(min_size=1, max_size=12))] = draw(hostile_bytes())
    return out


# Redis types a key may have instead of the one we expect.
WRONG_TYPES = ("string", "list", "hash", "set", "zset", "stream")


def wrong_type() -> st.SearchStrategy[str]:
    return st.sampled_from(WRONG_TYPES)


def write_type(r, key: str, kind: str, payload: bytes = b"poison") -> None:
    """Replace `key` with a value of Redis type `kind` (r: decode_responses=False)."""
    p = r.pipeline(transaction=True)
    p.delete(key)
    if kind == "string":
        p.set(key, payload)
    elif kind == "list":
        p.rpush(key, payload)
    elif kind == "hash":
        p.hset(key, b"f", payload)
    elif kind == "set":
        p.sadd(key, payload)
    elif kind == "zset":
        p.zadd(key, {payload: 1})
    elif kind == "stream":
        p.xadd(key, {b"f": payload})
    p.execute()


# ----------------------------------------------------------------------------- control socket
def control_lines() -> st.SearchStrategy[bytes]:
    """Hostile control-socket requests (one line each, newline added by the caller). Never a
    real state-changing command: stop/reload/log-level/reopen-logs are excluded."""
    safe_cmd = st.one_of(st.sampled_from(("ping", "status", "help", "", "STATUS", "st\x00atus")),
                         st.text(max_size=20).filter(
                             lambda c: c not in ("stop", "reload", "log-level", "reopen-logs")),
                         json_scalar(), st.lists(json_scalar(), max_size=3))
    obj = st.fixed_dictionaries({"cmd": safe_cmd}, optional={
        "args": json_value(), "id": json_value()}).map(dumps)
    return st.one_of(
        st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
        invalid_utf8(), deep_json(), obj, json_value().map(dumps),
        st.sampled_from((b"{", b"}", b"\x00" * 100, b'{"cmd": "status", "args": [1]}',
                         b'{"cmd": "ping"' + b" " * 1000)))


# ----------------------------------------------------------------------------- configs
SECTIONS = {
    "town": ("name", "root"),
    "redis": ("url", "socket", "bind", "port", "password", "save", "appendonly", "appendfsync",
              "maxmemory", "maxmemory_policy", "server", "data_dir", "pool_size",
              "start_timeout_s", "restart_backoff_max_s", "tls"),
    "control": ("socket",),
    "logging": ("level", "file"),
    "daemon": ("drain_timeout_s", "pidfile", "watchdog_stall_s"),
    "runtime": ("heartbeat_interval_s", "block_timeout_s", "lease_ttl_s", "stale_after_s",
                "sweep_interval_s", "idle_timeout_s", "retry_backoff_s", "retry_backoff_max_s",
                "result_tail_bytes", "max_blocking_connections", "backlog_claim"),
    "missions": ("enabled", "lease_ttl_s", "sweep_interval_s", "gh", "gh_timeout_s",
                 "conductor_help_backoff_s"),
}


def yaml_scalar() -> st.SearchStrategy:
    return st.one_of(st.none(), st.booleans(), st.integers(-(1 << 65), 1 << 65),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                     st.sampled_from(("", "64mb", "1gb", "-1", "0", "unix:///nonexistent",
                                      "redis://:pw@127.0.0.1:1/0", "rediss://h:99999",
                                      "3600 1 300", "x" * 300, "/dev/null", "~", "../..")))


def yaml_value() -> st.SearchStrategy:
    return st.recursive(yaml_scalar(), lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)),
        max_leaves=8)


@st.composite
def config_dict(draw, root: str) -> dict:
    """A config mapping: real section and key names (plus typos), hostile values."""
    doc: dict = {}
    for sec in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[sec] + ("bogus", "Level")), max_size=4,
                             unique=True))
        doc[sec] = {k: draw(yaml_value()) for k in keys} if draw(st.integers(0, 6)) else \
            draw(yaml_value())
    if draw(st.booleans()):
        doc["agent_clis"] = draw(st.one_of(
            yaml_value(),
            st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(
                st.text(max_size=30), st.fixed_dictionaries(
                    {"command": yaml_scalar()},
                    optional={"timeout_s": yaml_scalar(), "max_attempts": yaml_scalar(),
                              "env": yaml_value(), "workdir": yaml_scalar()})), max_size=3)))
    if draw(st.booleans()):
        doc["agents"] = draw(st.one_of(yaml_value(), st.lists(st.fixed_dictionaries(
            {"name": yaml_scalar(), "cli": st.sampled_from(("fa", "claude", "", "nope"))},
            optional={"count": st.one_of(st.integers(-3, 200), yaml_scalar()),
                      "role": yaml_scalar(), "tags": yaml_value(), "env": yaml_value(),
                      "workdir": yaml_scalar()}), max_size=3)))
    if draw(st.booleans()):
        doc["adopt"] = draw(yaml_scalar())
    # keep the town where the trial lives (so a *valid* doc never touches other dirs)
    town = doc.get("town")
    if isinstance(town, dict) or town is None:
        doc["town"] = {**(town or {}), "root": root}
    return doc


def _dump(d) -> bytes:
    try:
        return yaml.safe_dump(d, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, UnicodeEncodeError, ValueError):
        return repr(d).encode("utf-8", "surrogatepass")


@st.composite
def config_docs(draw, root: str) -> bytes:
    """Config files: generated mappings as YAML, sometimes mangled at the byte level."""
    text = _dump(draw(config_dict(root)))
    how = draw(st.integers(0, 5))
    if how == 0:   # a byte flipped / inserted somewhere
        i = draw(st.integers(0, max(0, len(text) - 1)))
        text = text[:i] + draw(st.binary(min_size=1, max_size=4)) + text[i + 1:]
    elif how == 1:
        text += b"\n" + draw(invalid_utf8())
    elif how == 2:  # a duplicated top-level key
        text += b"\ntown: {name: dup}\n"
    return text


def hand_picked_configs(root: str, agent_cli: str) -> list[tuple[str, bytes]]:
    """The brief's cases, plus a few classics."""
    ok = f"town: {{name: ft, root: {root}}}\n"
    return [
        ("empty file", b""),
        ("only a comment", b"# nothing\n"),
        ("non-UTF-8 bytes", b"town: {name: \xff\xfe}\n"),
        ("NUL bytes", b"town:\x00 {name: x}\n"),
        (".nan", (ok + "runtime: {heartbeat_interval_s: .nan}\n").encode()),
        (".inf", (ok + "daemon: {drain_timeout_s: .inf}\n").encode()),
        ("-.inf", (ok + "runtime: {lease_ttl_s: -.inf}\n").encode()),
        ("huge int", (ok + "redis: {pool_size: 99999999999999999999999999}\n").encode()),
        ("count 100000 (check-config)",
         (ok + f"agent_clis: {{fa: {{command: {json.dumps(agent_cli)}}}}}\n"
               "agents: [{name: w, cli: fa, count: 100000}]\n").encode()),
        ("count .nan", (ok + "agents: [{name: w, cli: claude, count: .nan}]\n").encode()),
        ("duplicate keys", (ok + "town: {name: other}\nlogging: {level: info}\n"
                                 "logging: {level: debug}\n").encode()),
        ("2 MB file", (ok + "# " + "x" * (2 << 20) + "\n").encode()),
        ("2 MB value", (ok + f"agent_clis: {{fa: {{command: \"{'y' * (2 << 20)}\"}}}}\n").encode()),
        ("top level list", b"- a\n- b\n"),
        ("top level scalar", b"42\n"),
        ("yaml alias bomb", (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                             b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c]\n"
                             b"town: {name: *d}\n")),
        ("python tag", b"town: !!python/object/apply:os.system ['true']\n"),
        ("tabs", b"town:\n\tname: x\n"),
        ("deep nesting", b"runtime: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("unknown section", (ok + "runtimee: {}\n").encode()),
        ("agents not a list", (ok + "agents: {name: w}\n").encode()),
        ("socket path too long", (ok + f"control: {{socket: /tmp/{'s' * 200}.sock}}\n").encode()),
    ]
