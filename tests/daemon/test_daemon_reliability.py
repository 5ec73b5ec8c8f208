"""Reliability of a real daemon: reloads that would hang it or empty the town are refused with the
old config running; `status` answers from the daemon's own state while Redis is frozen or down;
other uids get 77 and one clear line; a daemon that does not answer is not "not running"."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.helpers import RedisServer, tinytownd_cmd, wait_for
from tinytownd.daemon import control

AGENTS = {"agent_clis": {"e": "true"}, "agents": [{"name": "w", "cli": "e", "count": 2}]}


def _running_agents(st: dict) -> list[str]:
    return sorted(a["name"] for a in st["components"]["runtime"].get("agents", []) if a["running"])


def _timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


# ----------------------------------------------------------------------------- reload refusals
def test_reload_refuses_unbounded_empty_and_agentless_files(daemon):
    daemon.write(**AGENTS)
    daemon.start()
    wait_for(lambda: _running_agents(daemon.status()) == ["w-1", "w-2"], 20, what="agents")
    good = daemon.cfg_path.read_text()

    def refused(text: str, words: str, *, via_sighup: bool = False):
        before = daemon.status()["reloads"]
        daemon.write_raw(text)
        if via_sighup:
            at = (daemon.status()["last_reload"] or {}).get("at")
            daemon.proc.send_signal(signal.SIGHUP)
            st = wait_for(lambda: (s := daemon.status())["last_reload"]
                          and s["last_reload"].get("at") != at and s, 20, what="SIGHUP reload")
            assert st["last_reload"]["ok"] is False and words in st["last_reload"]["error"]
        else:
            r = daemon.cli("reload")
            assert r.returncode == 78, (r.stdout, r.stderr)
            assert f"{daemon.cfg_path}: " in r.stderr and words in r.stderr, r.stderr
            assert "keeps running with its previous config" in r.stderr
            assert "Traceback" not in r.stderr
        st = daemon.status()
        assert st["state"] == "running" and st["reloads"] == before
        assert _running_agents(st) == ["w-1", "w-2"]

    big = {"agent_clis": {"e": "true"}, "agents": [{"name": "w", "cli": "e", "count": 100000}]}
    daemon.write(**big)
    refused(daemon.cfg_path.read_text(), "agents[0].count: 100000 is above the maximum 1000")
    refused(daemon.cfg_path.read_text(), "agents[0].count: 100000 is above the maximum 1000",
            via_sighup=True)
    refused("", "the file is empty")
    refused("# every line commented out\n#agents:\n", "the file is empty", via_sighup=True)
    root = f"town: {{name: t, root: '{daemon.root}'}}\n"
    refused(root + "agent_clis: {e: 'true'}\n#agents:\n#  - {name: w, cli: e, count: 2}\n",
            "agents: this reload would remove all 2 agents")
    refused(root + "agents:\n", "write `agents: []`", via_sighup=True)
    refused(root + "redis:\n  port: 1\n  port: 2\n",
            "redis.port: duplicate key (line 3, again at line 4)", via_sighup=True)

    # saying so explicitly: `agents: []` removes every agent
    daemon.write_raw(root + "agents: []\n")
    r = daemon.cli("reload")
    assert r.returncode == 0, r.stderr
    assert "agent w-1 removed" in r.stdout and "agent w-2 removed" in r.stdout
    wait_for(lambda: _running_agents(daemon.status()) == [], 20, what="agents drained")
    # with no agent left, a file without agents is fine; an empty file still is not
    daemon.write_raw(root)
    assert daemon.cli("reload").returncode == 0
    daemon.write_raw("")
    r = daemon.cli("reload")
    assert r.returncode == 78 and "the file is empty" in r.stderr
    # and back to the good file: the agents return
    daemon.write_raw(good)
    assert daemon.cli("reload").returncode == 0
    wait_for(lambda: _running_agents(daemon.status()) == ["w-1", "w-2"], 20, what="agents back")
    assert daemon.stop() == 0


# ----------------------------------------------------------------------------- status vs Redis
def _status_cli(daemon):
    return _timed(lambda: daemon.cli("status"))


def _assert_answers_without_redis(daemon, what: str):
    """The daemon answers within a second from its own state and says Redis is unreachable."""
    st, took = _timed(lambda: daemon.request("status", timeout=10))
    assert took < 1.0, f"status took {took:.2f}s with {what}"
    r = st["redis"]
    assert r["reachable"] is False and r["ready"] is False and r["error"], r
    rt = st["components"]["runtime"]
    assert rt["redis_stale"] is True and rt["redis_error"]
    assert _running_agents(st) == ["w-1", "w-2"]         # from the daemon's own state
    assert st["state"] == "running" and st["pid"] == daemon.proc.pid
    return st


def _assert_cli_unreachable(daemon, baseline_s: float):
    r, took = _status_cli(daemon)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "UNREACHABLE" in r.stdout and "Redis is unreachable" in r.stdout, r.stdout
    assert "not running" not in r.stdout + r.stderr
    # the CLI's own start-up is the baseline; the answer adds well under a second
    assert took < baseline_s + 1.0, (took, baseline_s)
    r = daemon.cli("status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["redis"]["reachable"] is False


def _assert_normal(daemon):
    def ok():
        st = daemon.status()
        return st if st["redis"]["reachable"] and st["redis"]["ready"] and \
            not st["components"]["runtime"].get("redis_stale") else None
    wait_for(ok, 20, what="status normal again")
    r = daemon.cli("status")
    assert r.returncode == 0 and "UNREACHABLE" not in r.stdout and ", ready, version" in r.stdout


def test_status_answers_while_the_owned_redis_is_frozen(daemon):
    daemon.write(**AGENTS)
    daemon.start()
    wait_for(lambda: _running_agents(daemon.status()) == ["w-1", "w-2"], 20, what="agents")
    r, baseline = _status_cli(daemon)
    assert r.returncode == 0 and ", ready, version" in r.stdout
    rpid = daemon.status()["redis"]["pid"]
    os.kill(rpid, signal.SIGSTOP)
    try:
        for _ in range(3):        # again and again: nothing piles up behind the frozen Redis
            _assert_answers_without_redis(daemon, "the redis child stopped")
        _assert_cli_unreachable(daemon, baseline)
    finally:
        os.kill(rpid, signal.SIGCONT)
    _assert_normal(daemon)
    assert daemon.status()["redis"]["pid"] == rpid
    assert daemon.stop() == 0


def test_status_answers_while_an_external_redis_is_frozen_or_down(tmpdir_short):
    srv = RedisServer(tmpdir_short / "ext").start()
    d = DaemonProcess(tmpdir_short / "d", redis={"url": srv.url}, **AGENTS)
    try:
        d.start()
        wait_for(lambda: _running_agents(d.status()) == ["w-1", "w-2"], 20, what="agents")
        assert d.status()["redis"]["mode"] == "external"
        _, baseline = _status_cli(d)
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            _assert_answers_without_redis(d, "the external redis stopped")
            _assert_cli_unreachable(d, baseline)
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        _assert_normal(d)
        srv.stop()                                  # down for good: connection refused
        st = _assert_answers_without_redis(d, "the external redis gone")
        assert "Error" in st["redis"]["error"] or "refused" in st["redis"]["error"].lower()
        _assert_cli_unreachable(d, baseline)
    finally:
        d.cleanup()
        srv.stop()


# ----------------------------------------------------------------------------- no answer
def test_a_daemon_that_does_not_answer_is_not_reported_as_not_running(tmpdir_short):
    d = DaemonProcess(tmpdir_short)          # config only; a fake listener takes the socket
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(d.control_sock))
    silent.listen(8)                          # connections wait in the backlog: no answer
    try:
        with pytest.raises(control.NoReply):
            control.request(d.control_sock, "status", timeout=0.3)
        r = d.cli("status", "--json")
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert "did not answer" in r.stderr and "not running" not in r.stdout + r.stderr
        assert json.loads(r.stdout)["answering"] is False
    finally:
        silent.close()
        os.unlink(d.control_sock)
    # a listener that hangs up without a word: the conversation broke, still not "not running"
    rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rude.bind(str(d.control_sock))
    rude.listen(8)


    def hang_up():
        while True:
            try:
                c, _ = rude.accept()
            except OSError:
                return
            c.close()
    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    try:
        r = d.cli("status")
        assert r.returncode == 4 and "without a reply" in r.stderr, (r.stdout, r.stderr)
        for cmd in ("reload", "stop"):
            r = d.cli(cmd)
            assert r.returncode == 69 and "without a reply" in r.stderr, (cmd, r.stderr)
            assert "not running" not in r.stdout + r.stderr and "Traceback" not in r.stderr
    finally:
        rude.close()
    # nobody at all: 3 (status), 69 (reload), 0 (stop)
    os.unlink(d.control_sock)
    assert d.cli("status").returncode == 3
    assert d.cli("reload").returncode == 69
    assert d.cli("stop").returncode == 0


# ----------------------------------------------------------------------------- other uids
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# CAP_DAC_OVERRIDE gets a non-root process past the socket's 0600 mode, so the daemon's own
# SO_PEERCRED check is what refuses it
NOBODY_DAC = NOBODY + ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]


def _as(prefix, *args) -> subprocess.CompletedProcess:
    return subprocess.run(prefix + tinytownd_cmd() + list(args), capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items()
                                           if k not in ("TINYTOWND_CONFIG", "REDIS_URL")})


def test_other_uid_gets_77_and_one_line(daemon):
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as another uid")
    if _as(NOBODY, "--version").returncode != 0:     # a checkout under a 0700 directory
        pytest.skip("uid 65534 cannot run this checkout's tinytownd (a parent directory it "
                    "cannot enter, as `mktemp -d` makes)")
    if _as(NOBODY_DAC, "--version").returncode != 0:
        pytest.skip("setpriv cannot grant ambient capabilities here")
    daemon.start()
    cfg_dir = tempfile.mkdtemp(prefix="tt-cfg-", dir="/tmp")
    try:
        os.chmod(cfg_dir, 0o755)                  # the config is readable by nobody ...
        cfg = os.path.join(cfg_dir, "tinytownd.yaml")
        shutil.copy(daemon.cfg_path, cfg)
        os.chmod(cfg, 0o644)                      # ... the daemon's root (0700) and socket are not
        for prefix, words in ((NOBODY, "permission denied on"),
                              (NOBODY_DAC, "the daemon refuses our uid 65534")):
            for cmd in ("status", "stop", "reload"):
                r = _as(prefix, cmd, "-c", cfg)
                assert r.returncode == 77, (prefix, cmd, r.stdout, r.stderr)
                assert r.stderr.count("\n") == 1 and words in r.stderr, (cmd, r.stderr)
                assert "Traceback" not in r.stderr and "Error" not in r.stderr, r.stderr
                assert daemon.proc.poll() is None
        st = daemon.status()                       # unharmed, and nothing was stopped/reloaded
        assert st["state"] == "running" and st["reloads"] == 0
        refused = [json.loads(x) for x in daemon.stdout_lines()
                   if '"control connection refused"' in x]
        assert len(refused) == 3 and {e["uid"] for e in refused} == {65534}
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)
    assert daemon.stop() == 0
