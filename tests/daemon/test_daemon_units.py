"""Small pieces of the daemon, in-process: pidfile, sd_notify, supervisor, reload helpers,
the control socket's peer-uid check."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import gevent
import pytest
from gevent.event import Event

from tinytownd import config, logs
from tinytownd.daemon import control, sdnotify
from tinytownd.config import keep_old as _keep_old, redact_url as redact
from tinytownd.daemon.pidfile import PidFile, PidFileHeld, read_pid
from tinytownd.daemon.supervisor import Supervisor

PY = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)


def test_pidfile_lock_stale_and_release(tmpdir_short):
    path = tmpdir_short / "run" / "x.pid"
    a = PidFile(path).acquire()
    assert read_pid(path) == os.getpid()
    with pytest.raises(PidFileHeld) as e:
        PidFile(path).acquire()            # flock conflicts across open files, even in-process
    assert e.value.pid == os.getpid()
    assert PidFile(path).held_by() == os.getpid()
    a.release()
    assert not path.exists()
    path.write_text("999999\n")            # stale: nobody holds the lock
    assert PidFile(path).held_by() is None
    b = PidFile(path).acquire()
    assert read_pid(path) == os.getpid()
    path.write_text("12345\n")             # not ours any more: release must not unlink it
    b.release()
    assert path.exists()


@pytest.mark.parametrize("abstract", [False, True])
def test_sdnotify_datagrams(tmpdir_short, abstract):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"tt-test-{os.getpid()}"
        s.bind("\0" + name)
        env = {"NOTIFY_SOCKET": "@" + name}
    else:
        s.bind(str(tmpdir_short / "n.sock"))
        env = {"NOTIFY_SOCKET": str(tmpdir_short / "n.sock")}
    s.settimeout(5)
    old = os.environ.copy()
    os.environ.update(env)
    try:
        assert sdnotify.ready("up")
        assert s.recv(1024) == b"READY=1\nSTATUS=up"
        assert sdnotify.reloading()
        msg = s.recv(1024).decode().split("\n")
        assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=")
        assert sdnotify.stopping()
        assert s.recv(1024) == b"STOPPING=1"
        assert sdnotify.watchdog()
        assert s.recv(1024) == b"WATCHDOG=1"
    finally:
        os.environ.clear()
        os.environ.update(old)
        s.close()
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_supervisor_backoff_states_and_stop(capsys):
    logs.configure("info")
    stopping = Event()
    sup = Supervisor(logs.get_logger("test"), stopping, backoff_initial=0.01, backoff_max=0.05)
    calls = {"n": 0}

    def crashy():
        calls["n"] += 1
        raise ValueError("nope")

    def steady():
        while not stopping.is_set():
            sup.progress("steady")
            stopping.wait(0.01)

    sup.add("crashy", crashy)
    sup.add("steady", steady)
    sup.start()
    gevent.sleep(0.3)
    st = sup.states()
    assert st["steady"] == "running"
    assert st["crashy"] == "failed" and calls["n"] >= 5        # >= FAILED_AFTER in a row
    assert sup.details()["crashy"]["last_error"] == "ValueError: nope"
    assert sup.stalled(10) == []
    stopping.set()
    assert sup.join(2)
    assert set(sup.states().values()) == {"stopped"}
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    crash = next(x for x in lines if x["event"] == "service crashed")
    assert crash["service"] == "crashy" and crash["exception"][0]["exc_type"] == "ValueError"


def test_keep_old_and_redact():
    old = config.from_dict({"redis": {"socket": "a.sock", "maxmemory": 1}}, "/tmp/x/t.yaml",
                           env={}, check_files=False)
    new = config.from_dict({"redis": {"socket": "b.sock", "maxmemory": 2}}, "/tmp/x/t.yaml",
                           env={}, check_files=False)
    eff = _keep_old(new, old, "redis.socket")
    assert eff.redis.socket == "a.sock" and eff.redis.maxmemory == 2
    assert redact("unix:///x/r.sock?password=abc&db=1") == "unix:///x/r.sock?password=****&db=1"
    assert redact("redis://u:pw@h:1/0") == "redis://u:****@h:1/0"


def test_control_refuses_other_uid(tmpdir_short):
    """SO_PEERCRED: a peer that is neither us nor root gets 'permission denied'."""
    if os.getuid() != 0 or not PY:
        pytest.skip("needs root (to connect as another uid) and a system python3")
    logs.configure("info")
    os.chmod(tmpdir_short, 0o755)
    path = tmpdir_short / "c.sock"
    srv = control.ControlServer(path, {"ping": lambda a: {"pong": True}}, logs.get_logger("t"))
    srv.start()
    try:
        os.chmod(path, 0o666)      # let the filesystem through, so the uid check is what refuses
        # the refusal is sent right after accept(), before any request is read
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "print(s.makefile().readline())")
        p = subprocess.Popen([PY, "-c", code, str(path)], stdout=subprocess.PIPE,
                             text=True, preexec_fn=lambda: os.setuid(65534))
        out, _ = p.communicate(timeout=20)
        reply = json.loads(out)
        assert reply["ok"] is False and reply["code"] == "noperm"
        # a peer that sends its request first (as the CLI does), even a big one, still reads the
        # refusal: the server drains before closing, so no EPIPE / ECONNRESET on the peer's side
        code = ("import socket,sys,json; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "s.sendall(json.dumps({'cmd': 'ping', 'pad': 'x' * 200000}).encode() + b'\\n'); "
                "print(s.makefile().readline())")
        for _ in range(5):
            p = subprocess.Popen([PY, "-c", code, str(path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: os.setuid(65534))
            out, err = p.communicate(timeout=20)
            assert p.returncode == 0, err
            assert json.loads(out)["code"] == "noperm"
        assert control.request(path, "ping")["pong"] is True     # root/our uid is fine
    finally:
        srv.close()
    assert not path.exists()
