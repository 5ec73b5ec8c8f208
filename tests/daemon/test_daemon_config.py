"""check-config at the CLI level, and etc/tinytownd.yaml = the schema defaults."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import ROOT, run_cli
from tinytownd import config

ETC = ROOT / "etc" / "tinytownd.yaml"

BAD = [
    ("town: {nmae: x}\n", "town.nmae", "did you mean 'name'"),
    ("redis: {appendfsync: sometimes}\n", "redis.appendfsync", "not one of"),
    ("redis: {maxmemory: 12zb}\n", "redis.maxmemory", "not a size"),
    ("redis: {port: 70000}\n", "redis.port", "above the maximum"),
    ("redis: {appendonly: maybe}\n", "redis.appendonly", "true or false"),
    ("redis: {save: '60'}\n", "redis.save", "pairs"),
    ("redis: {url: 'http://x'}\n", "redis.url", "scheme"),
    ("town: {name: 'a:b'}\n", "town.name", "letters"),
    ("logging: {level: loud}\n", "logging.level", "not one of"),
    ("redis: {socket: null, bind: 0.0.0.0, port: 7000}\n", "redis.bind", "password"),
    ("redis: {server: /nonexistent/redis-server}\n", "redis.server", "not found"),
    ("daemon: {drain_timeout_s: -1}\n", "daemon.drain_timeout_s", "below the minimum"),
    ("agents: [{name: w, cli: claud}]\n", "agents[0].cli", "did you mean 'claude'"),
    ("redis: {tls: {enabled: true, cert: nope.pem, key: k.pem}, port: 7000}\n",
     "redis.tls.cert", "not found"),
    ("control: [1]\n", "control", "mapping"),
    ("reddis: {}\n", "reddis", "did you mean 'redis'"),
]


def _check(tmp: Path, i: int, text: str):
    p = tmp / f"bad{i}.yaml"
    p.write_text(text)
    return p, run_cli("check-config", "-c", str(p))


def test_check_config_names_the_bad_key(tmpdir_short):
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda a: _check(tmpdir_short, *a),
                              [(i, text) for i, (text, _, _) in enumerate(BAD)]))
    for (text, key, words), (path, r) in zip(BAD, results):
        assert r.returncode == 78, (text, r.stdout, r.stderr)
        assert f"{path}: {key}: " in r.stderr, (text, r.stderr)
        assert words in r.stderr, (text, r.stderr)


def test_check_config_syntax_missing_and_ok(tmpdir_short):
    p = tmpdir_short / "syntax.yaml"
    p.write_text("town: {name: x\n")
    r = run_cli("check-config", "-c", str(p))
    assert r.returncode == 78 and f"{p}: invalid YAML: line" in r.stderr
    r = run_cli("check-config", "-c", str(tmpdir_short / "missing.yaml"))
    assert r.returncode == 78 and "file not found" in r.stderr
    ok = tmpdir_short / "ok.yaml"
    ok.write_text("town: {name: fine}\n")
    r = run_cli("check-config", "-c", str(ok))
    assert r.returncode == 0 and "OK" in r.stdout
    r = run_cli("check-config", env={"TINYTOWND_CONFIG": str(ok)})   # discovery
    assert r.returncode == 0 and str(ok) in r.stdout
    r = run_cli("run", "-c", str(tmpdir_short / "missing.yaml"))
    assert r.returncode == 78
    r = run_cli("--help")
    assert "exit codes" in r.stdout and "78" in r.stdout
    r = run_cli("run", "--help")
    assert "--daemonize" in r.stdout and "78" in r.stdout


def _schema_keys(cls, prefix="") -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        if not f.compare:          # path, env_redis_url, ...: not keys of the file
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            out |= _schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _file_keys(data, prefix="") -> set[str]:
    out = set()
    for k, v in data.items():
        if isinstance(v, dict) and v and k not in ("agent_clis",):
            out |= _file_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_etc_yaml_loads_and_equals_schema_defaults():
    cfg = config.load(str(ETC), env={}, check_files=False)
    defaults = config.from_dict({}, str(ETC), env={}, check_files=False)
    assert cfg == defaults
    assert config.diff(defaults, cfg) == []
    text = ETC.read_text()
    data = yaml.safe_load(text)
    assert _file_keys(data) == _schema_keys(config.Config)
    # the per-entry keys of agent_clis / agents are documented (in comments)
    for cls in (config.AgentCli, config.AgentSpec):
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in text or f"{f.name} (" in text, f.name
    r = run_cli("check-config", "-c", str(ETC))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("unit", ["tinytownd.service", "tinytownd@.service"])
def test_systemd_units(unit):
    """What the units must say; scripts/test-systemd checks that it works under a real systemd."""
    text = (ROOT / "systemd" / unit).read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "WatchdogSec=",
                 "ExecReload=", "StateDirectory=",
                 # a dead or wedged main process: redis-server still gets SIGTERM, and time to save
                 "ExecStop=/usr/local/bin/tinytownd stop", "KillMode=control-group",
                 "WatchdogSignal=SIGTERM"):
        assert line in text, line
    assert "MemoryDenyWriteExecute=yes" not in text
    keys = {line.split("=", 1)[0] for line in _directives(unit)}
    assert not keys & {"RuntimeDirectory", "LogsDirectory"}     # declared but never used
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    assert stop >= config.DaemonSection().drain_timeout_s


def _directives(unit: str) -> list[str]:
    return [line for line in (ROOT / "systemd" / unit).read_text().splitlines()
            if "=" in line and not line.startswith("#")]


def test_systemd_template_matches_the_plain_unit():
    """The template differs only where the instance name goes in (and its HOME)."""
    plain = [line.replace("tinytownd.yaml", "%i.yaml") for line in _directives("tinytownd.service")]
    template = _directives("tinytownd@.service")
    differ = {line.split("=", 1)[0] for line in set(plain) ^ set(template)}
    assert differ <= {"Description", "Documentation", "StateDirectory", "Environment"}, differ
    assert "StateDirectory=tinytownd-%i" in template
