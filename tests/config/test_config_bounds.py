"""Every count, size, length and duration has an upper bound; files are read defensively (size,
UTF-8, duplicate keys, nesting); whatever the input, the answer is a Config or a ConfigError with
`FILE: KEY: problem` lines, never a traceback (hypothesis)."""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import run_cli
from tinytownd import config
from tinytownd.config import checks

F = "/tmp/x/t.yaml"
SECTIONS = {"town": config.TownSection, "redis": config.RedisSection,
            "redis.tls": config.TlsSection, "redis.sentinel": config.SentinelSection, "control": config.ControlSection,
            "logging": config.LoggingSection, "daemon": config.DaemonSection,
            "runtime": config.RuntimeSection, "missions": config.MissionsSection,
            "http": config.HttpSection}
CLI = {"agent_clis": {"e": {"command": "true"}}}


def _err(data, **kw) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(data, F, env={}, **kw)
    return str(e.value)


def _nest(dotted: str, value) -> dict:
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _base(f) -> str:
    return str(f.type).replace(" | None", "")


def _numeric():
    """(dotted key, data builder, field) for every number in the schema."""
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.compare and _base(f) in ("int", "float"):
                yield f"{sec}.{f.name}", (lambda v, k=f"{sec}.{f.name}": _nest(k, v)), f
    for f in dataclasses.fields(config.AgentCli):
        if _base(f) in ("int", "float"):
            yield (f"agent_clis.e.{f.name}",
                   lambda v, n=f.name: {"agent_clis": {"e": {"command": "true", n: v}}}, f)
    for f in dataclasses.fields(config.AgentSpec):
        if _base(f) in ("int", "float"):
            yield (f"agents[0].{f.name}",
                   lambda v, n=f.name: {**CLI, "agents": [{"name": "w", "cli": "e", n: v}]}, f)


NUMERIC = list(_numeric())


def test_every_number_has_a_documented_upper_bound():
    etc = (Path(__file__).resolve().parents[2] / "etc" / "tinytownd.yaml").read_text()
    for key, _, f in NUMERIC:
        check = f.metadata["check"]
        hi = getattr(check, "hi", None)
        assert hi is not None, f"{key} has no upper bound"
        lo = getattr(check, "lo", None)
        shown = f"{lo:g}..{hi:g}" if _base(f) == "float" else f"{lo}..{hi}"
        assert shown in etc, f"etc/tinytownd.yaml does not document {key} [{shown}]"


@pytest.mark.parametrize("key,build,f", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_numbers_above_the_bound_nan_and_inf_are_refused(key, build, f):
    hi = f.metadata["check"].hi
    too_big = hi * 2 + 1 if _base(f) == "int" else float(hi) * 2 + 1
    msg = _err(build(too_big))
    assert f"{F}: {key}: " in msg and "above the maximum" in msg, msg
    if _base(f) == "float":
        for bad, shown in ((math.nan, ".nan"), (math.inf, ".inf"), (-math.inf, "-.inf")):
            msg = _err(build(bad))
            assert f"{F}: {key}: must be a finite number, not {shown}" in msg, msg
    else:
        assert f"{F}: {key}: must be an integer" in _err(build(math.nan))


def test_nan_and_inf_from_yaml_text(tmpdir_short):
    for text, key in (("runtime: {heartbeat_interval_s: .nan}\n", "runtime.heartbeat_interval_s"),
                      ("agent_clis: {e: {command: x, timeout_s: .inf}}\n",
                       "agent_clis.e.timeout_s"),
                      ("missions: {gh_timeout_s: .NaN}\n", "missions.gh_timeout_s")):
        p = tmpdir_short / "n.yaml"
        p.write_text(text)
        with pytest.raises(config.ConfigError) as e:
            config.load(str(p), env={}, check_files=False)
        assert f"{p}: {key}: must be a finite number" in str(e.value)


def test_agent_count_and_total_bounds():
    msg = _err({**CLI, "agents": [{"name": "w", "cli": "e", "count": 100000}]})
    assert f"{F}: agents[0].count: 100000 is above the maximum {checks.MAX_AGENT_COUNT}" in msg
    msg = _err({**CLI, "agents": [{"name": f"w{i}", "cli": "e", "count": 1000} for i in range(3)]})
    assert f"{F}: agents: 3000 agents in all" in msg and str(checks.MAX_AGENTS_TOTAL) in msg
    many = [{"name": f"w{i}", "cli": "e"} for i in range(checks.MAX_AGENTS_TOTAL + 1)]
    assert f"{F}: agents: {len(many)} entries, over the maximum" in _err({**CLI, "agents": many})
    ok = config.from_dict({**CLI, "agents": [{"name": "a", "cli": "e", "count": 1000},
                                             {"name": "b", "cli": "e", "count": 1000}]}, F, env={})
    assert len(ok.expanded_agents()) == checks.MAX_AGENTS_TOTAL


@pytest.mark.parametrize("data,key,words", [
    ({"agent_clis": {"e": {"command": "x" * 16385}}}, "agent_clis.e.command", "maximum 16384"),
    ({"agent_clis": {"e": {"command": "a\0b"}}}, "agent_clis.e.command", "NUL"),
    ({"agent_clis": {"e": {"command": "x", "env": {f"K{i}": "v" for i in range(65)}}}},
     "agent_clis.e.env", "65 variables"),
    ({"agent_clis": {"e": {"command": "x", "env": {"A=B": "v"}}}}, "agent_clis.e.env",
     "not a variable name"),
    ({"agent_clis": {"e": {"command": "x", "env": {"K": "v" * 8193}}}}, "agent_clis.e.env.K",
     "maximum 8192"),
    ({"agent_clis": {"e": {"command": "x", "env": {"K": "a\0"}}}}, "agent_clis.e.env.K", "NUL"),
    ({"agent_clis": {"e": {"command": "x", "env": {"K": [1]}}}}, "agent_clis.e.env.K",
     "must be a string"),
    ({"agent_clis": {"e": {"command": "x", "timeout_s": 0}}}, "agent_clis.e.timeout_s", "> 0"),
    ({"agent_clis": {f"c{i}": "x" for i in range(257)}}, "agent_clis", "257 entries"),
    ({"agent_clis": {"x" * 65: "true"}}, "agent_clis." + "x" * 65, "maximum 64"),
    ({**CLI, "agents": [{"name": "w", "cli": "e", "tags": [f"t{i}" for i in range(33)]}]},
     "agents[0].tags", "33 tags"),
    ({**CLI, "agents": [{"name": "w", "cli": "e", "tags": ["ok", "t" * 65]}]},
     "agents[0].tags[1]", "maximum 64"),
    ({**CLI, "agents": [{"name": "w", "cli": "e", "tags": [{"a": 1}]}]}, "agents[0].tags[0]",
     "must be a string"),
    ({**CLI, "agents": [{"name": "w", "cli": "e", "role": "r" * 65}]}, "agents[0].role",
     "maximum 64"),
    ({**CLI, "agents": [{"name": "w", "cli": "e" * 65}]}, "agents[0].cli", "maximum 64"),
    ({**CLI, "agents": [{"name": "w" * 65, "cli": "e"}]}, "agents[0].name", "maximum 64"),
    ({**CLI, "agents": [{"name": "w", "cli": "e", "env": {"K": "v" * 9000}}]},
     "agents[0].env.K", "maximum 8192"),
    ({"town": {"root": "/" + "r" * 5000}}, "town.root", "maximum 4096"),
    ({"redis": {"server": "redis\0server"}}, "redis.server", "NUL"),
    ({"redis": {"password": "\ud800"}}, "redis.password", "Unicode"),
    ({"redis": {"maxmemory": "2048gb"}}, "redis.maxmemory", "above the maximum"),
    ({"redis": {"maxmemory": 1 << 41}}, "redis.maxmemory", "above the maximum"),
    ({"redis": {"save": " ".join(["60 1"] * 17)}}, "redis.save", "maximum 16"),
    ({"redis": {"save": "99999999999 1"}}, "redis.save", "pairs"),
    ({"redis": {"save": "\u00b9 1"}}, "redis.save", "pairs"),          # '¹'.isdigit() is True
    ({"redis": {"url": "redis://[::1"}}, "redis.url", "not a valid URL"),
    ({"redis": {"url": "redis://h:port/0"}}, "redis.url", "not a valid URL"),
    ({"logging": {"file": "/nonexistent-dir-tt/sub/d.log"}}, "logging.file",
     "directory /nonexistent-dir-tt/sub does not exist"),
    ({"logging": {"file": "/tmp"}}, "logging.file", "is a directory"),
])
def test_lengths_sizes_and_contents_are_bounded(data, key, words):
    msg = _err(data)
    assert f"{F}: {key}: " in msg and words in msg, msg


def test_log_file_under_the_root_may_be_created_later(tmpdir_short):
    c = config.from_dict({"town": {"root": str(tmpdir_short / "r")},
                          "logging": {"file": "logs/new/d.log"}}, F, env={})
    assert c.log_file_path == tmpdir_short / "r" / "logs" / "new" / "d.log"
    missing = tmpdir_short / "missing"
    msg = _err({"town": {"root": str(tmpdir_short / "r")},
                "logging": {"file": str(missing / "d.log")}})
    assert f"logging.file: directory {missing} does not exist" in msg


def test_problem_list_is_capped():
    data = {f"junk{i}": 1 for i in range(500)}
    msg = _err(data)
    lines = msg.splitlines()
    assert len(lines) == checks.MAX_PROBLEMS + 1 and "and 450 more problems" in lines[-1]


# ----------------------------------------------------------------------------- reading files
def _load_err(path) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path), env={}, check_files=False)
    return str(e.value)


def test_not_utf8_too_large_and_not_a_file(tmpdir_short):
    p = tmpdir_short / "latin1.yaml"
    p.write_bytes("town:\n  name: caf\xe9\n".encode("latin-1"))
    assert f"{p}: not UTF-8 text: byte 0xe9 at line 2" in _load_err(p)
    big = tmpdir_short / "big.yaml"
    with open(big, "wb") as f:                      # sparse: 64 MiB that are never read
        f.truncate(64 << 20)
    assert f"{big}: larger than 1048576 bytes" in _load_err(big)
    # an endless file is refused too, after reading 1 MiB (it used to read forever)
    assert "/dev/zero: larger than 1048576 bytes" in _load_err("/dev/zero")
    assert f"{tmpdir_short}: is a directory" in _load_err(tmpdir_short)
    bom = tmpdir_short / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbftown: {name: bom}\n")
    assert config.load(str(bom), env={}, check_files=False).town.name == "bom"


@pytest.mark.parametrize("text,key,lines", [
    ("town: {name: a}\ntown: {name: b}\n", "town", (1, 2)),
    ("redis:\n  port: 1\n  bind: 127.0.0.1\n  port: 2\n", "redis.port", (2, 4)),
    ("agents:\n  - name: w\n    cli: e\n    cli: f\n", "agents[0].cli", (3, 4)),
    ("agent_clis:\n  e:\n    env: {A: 1, A: 2}\n", "agent_clis.e.env.A", (3, 3)),
    ("redis:\n  tls:\n    enabled: false\n    'enabled': true\n", "redis.tls.enabled", (3, 4)),
    ("runtime:\n  lease_ttl_s: 30\n  lease_ttl_s: 30\n", "runtime.lease_ttl_s", (2, 3)),
])
def test_duplicate_keys_at_any_depth(tmpdir_short, text, key, lines):
    p = tmpdir_short / "dup.yaml"
    p.write_text(text)
    msg = _load_err(p)
    assert msg == f"{p}: {key}: duplicate key (line {lines[0]}, again at line {lines[1]})"


def test_merge_keys_may_be_overridden(tmpdir_short):
    p = tmpdir_short / "merge.yaml"
    p.write_text("agent_clis: {e: 'true'}\nagents:\n  - &w {name: a, cli: e, role: r}\n"
                 "  - <<: *w\n    name: b\n")
    c = config.load(str(p), env={}, check_files=False)
    assert [(a.name, a.role) for a in c.agents] == [("a", "r"), ("b", "r")]


def test_nesting_and_alias_bombs(tmpdir_short):
    p = tmpdir_short / "deep.yaml"
    p.write_text("town: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "invalid YAML" in _load_err(p)
    # a billion laughs: tiny file, exponential structure; the message stays one short line
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
    p.write_text("x-bomb:\n" + "".join(f"  {x}\n" for x in lines) + "town: {name: *a11}\n")
    msg = _load_err(p)
    assert f"{p}: town.name: must be a string, not [[" in msg
    assert len(msg) < 2000


def test_check_config_and_run_refuse_bad_files(tmpdir_short):
    cases = []
    p = tmpdir_short / "latin1.yaml"
    p.write_bytes(b"town: {name: caf\xe9}\n")
    cases.append((p, "not UTF-8"))
    p = tmpdir_short / "count.yaml"
    p.write_text("agent_clis: {e: 'true'}\nagents: [{name: w, cli: e, count: 100000}]\n")
    cases.append((p, "agents[0].count: 100000 is above the maximum 1000"))
    p = tmpdir_short / "dup.yaml"
    p.write_text("redis:\n  port: 1\n  port: 2\n")
    cases.append((p, "redis.port: duplicate key (line 2, again at line 3)"))
    p = tmpdir_short / "nan.yaml"
    p.write_text("daemon: {drain_timeout_s: .nan}\n")
    cases.append((p, "daemon.drain_timeout_s: must be a finite number, not .nan"))
    p = tmpdir_short / "log.yaml"          # (the old code created the directory and ran)
    missing = tmpdir_short / "missing"
    p.write_text(f"town: {{root: {tmpdir_short / 'r'}}}\nlogging: {{file: {missing}/d.log}}\n")
    cases.append((p, f"logging.file: directory {missing} does not exist"))
    jobs = [(path, words, cmd) for path, words in cases for cmd in ("check-config", "run")]
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda j: run_cli(j[2], "-c", str(j[0]), timeout=60), jobs))
    for (path, words, cmd), r in zip(jobs, results):
        assert r.returncode == 78, (cmd, path, r.stderr)
        assert f"{path}: " in r.stderr and words in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
    r = run_cli("check-config", "-c", "/dev/zero", timeout=30)
    assert r.returncode == 78 and "larger than" in r.stderr


# ----------------------------------------------------------------------------- fuzz
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.integers(-5, 70000),
    st.floats(allow_nan=True, allow_infinity=True), _text,
    st.sampled_from(["", "0", "true", "64mb", "3600 1", "debug", "claude", "redis://h:1/0",
                     "unix:///tmp/r.sock", "redis://[::1", "127.0.0.1", "0.0.0.0", "/nonexistent",
                     "logs/x.log", "a" * 5000, "a\0b", "~/x", "..", "w-1", "supervisor"]))
_value = st.recursive(_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                  st.dictionaries(_text, c, max_size=3)),
                      max_leaves=8)


def _section(cls):
    names = [f.name for f in dataclasses.fields(cls) if f.compare] + ["bogus"]
    return st.dictionaries(st.sampled_from(names), _value, max_size=4)


_cli = st.one_of(_text, _section(config.AgentCli),
                 st.fixed_dictionaries({"command": st.sampled_from(["true", "cat", ""])},
                                       optional={"env": _value, "timeout_s": _value,
                                                 "max_attempts": _value}))
_agent = st.one_of(_section(config.AgentSpec), _value, st.fixed_dictionaries(
    {"name": st.sampled_from(["w", "w-1", "x" * 70, "", "conductor"]),
     "cli": st.sampled_from(["e", "claude", "nope", ""])},
    optional={"count": st.integers(-1, 3000), "tags": _value, "env": _value, "role": _value}))
DOC = st.fixed_dictionaries({}, optional={
    "town": st.one_of(_section(config.TownSection), _value),
    "redis": st.one_of(_section(config.RedisSection), _value),
    "control": _section(config.ControlSection), "logging": _section(config.LoggingSection),
    "daemon": _section(config.DaemonSection), "runtime": _section(config.RuntimeSection),
    "missions": _section(config.MissionsSection), "adopt": _value,
    "agent_clis": st.one_of(st.dictionaries(st.sampled_from(["e", "claude", "x y"]), _cli,
                                            max_size=3), _value),
    "agents": st.one_of(st.lists(_agent, max_size=4), _value),
    "bogus": _value,
})


def _assert_config_or_error(fn):
    try:
        cfg = fn()
    except config.ConfigError as e:
        text = str(e)
        assert text and all(line.startswith(e.file + ": ") for line in text.splitlines()), text
        assert len(text.splitlines()) <= checks.MAX_PROBLEMS + 1
        return None
    assert isinstance(cfg, config.Config)
    assert len(cfg.expanded_agents()) <= checks.MAX_AGENTS_TOTAL
    config.diff(config.Config(), cfg)        # and the result diffs cleanly
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(doc=DOC, check_files=st.booleans())
def test_fuzz_from_dict(doc, check_files):
    _assert_config_or_error(lambda: config.from_dict(doc, F, env={}, check_files=check_files))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(doc=DOC, junk=st.one_of(st.just(""), _text, st.binary(max_size=20).map(
    lambda b: b.decode("latin-1"))))
def test_fuzz_yaml_files(tmp_path_factory, doc, junk):
    d = tmp_path_factory.mktemp("fz")
    p = d / "c.yaml"
    text = yaml.safe_dump(doc, allow_unicode=True)
    # a well-formed document, the same with junk spliced in, and raw bytes
    for body in (text.encode(), (text[: len(text) // 2] + junk + text[len(text) // 2:]).encode(),
                 junk.encode("latin-1", "replace")):
        p.write_bytes(body)
        _assert_config_or_error(lambda: config.load(str(p), env={}, check_files=True))


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(docs=st.lists(DOC, min_size=4, max_size=4))
def test_fuzz_check_config_cli(tmp_path_factory, docs):
    d = tmp_path_factory.mktemp("fzcli")
    paths = []
    for i, doc in enumerate(docs):
        p = d / f"c{i}.yaml"
        p.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        paths.append(p)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda p: run_cli("check-config", "-c", str(p), timeout=60,
                                                env={"REDIS_URL": ""}), paths))
    for p, r in zip(paths, results):
        assert r.returncode in (0, 78), (p.read_text(), r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 78:
            assert all(line.startswith(f"{p}: ") for line in r.stderr.splitlines()), r.stderr


def test_odd_keys_stay_on_one_line(tmpdir_short):
    """Problems are printed one per line: newlines or NEL in keys never split or break them."""
    p = tmpdir_short / "odd.yaml"
    p.write_text('"bad\\nkey\\x85": 1\nredis: {password: [1]}\n', encoding="utf-8")
    r = run_cli("check-config", "-c", str(p))
    assert r.returncode == 78 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{p}: ") for line in lines), lines
    assert "bad\\nkey\\x85: unknown key" in lines[0] and "redis.password" in lines[1]
