"""Hosting components: supervised services (crash → restart with backoff), drain, the second
SIGTERM, reload fan-out, the watchdog's progress check. The components below are loaded by a real
daemon process through $TINYTOWND_COMPONENTS."""
from __future__ import annotations

import json
import os
import signal
import time

import gevent

from tests.support.helpers import ROOT, wait_for
from tinytownd.daemon.component import Component


class Flaky(Component):
    """A service that crashes twice, then runs; another that stalls after some progress."""

    name = "flaky"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.crashes = 0
        self.reloaded = 0

    def services(self):
        return {"flaky.loop": self.loop, "flaky.stall": self.stall}

    def loop(self):
        if self.crashes < 2:
            self.crashes += 1
            raise RuntimeError(f"boom {self.crashes}")
        while not self.ctx.stopping.is_set():
            self.ctx.progress("flaky.loop")
            self.ctx.stopping.wait(0.05)

    def stall(self):
        self.ctx.progress("flaky.stall")
        self.ctx.stopping.wait()          # never reports progress again

    def reload(self, old, new):
        self.reloaded += 1
        return [f"flaky saw level {new.logging.level}"]

    def status(self):
        return {"crashes": self.crashes, "reloaded": self.reloaded}


class SlowDrain(Component):
    name = "slow"

    def drain(self, deadline):
        while time.monotonic() < deadline:
            gevent.sleep(0.05)

    def status(self):
        return {"draining": self.ctx.stopping.is_set()}


ENV = {"PYTHONPATH": str(ROOT)}


def _events(daemon):
    return [json.loads(line) for line in daemon.stdout_lines()]


def test_crashing_service_restarts_and_reload_fans_out(daemon):
    daemon.write(daemon={"watchdog_stall_s": 1})
    daemon.start(env={**ENV, "TINYTOWND_COMPONENTS": "tests.daemon.test_daemon_components:Flaky",
                    "NOTIFY_SOCKET": str(daemon.root / "nobody.sock"), "WATCHDOG_USEC": "200000"})
    st = wait_for(lambda: (s := daemon.status())["services"]["flaky.loop"] == "running"
                  and s["service_details"]["flaky.loop"]["restarts"] == 2 and s, 15,
                  what="restarts")
    assert st["components"]["flaky"]["crashes"] == 2
    crashed = [e for e in _events(daemon) if e["event"] == "service crashed"]
    assert len(crashed) == 2 and crashed[0]["service"] == "flaky.loop"
    exc = crashed[0]["exception"]                # structured traceback, not a text blob
    assert isinstance(exc, list) and exc[0]["exc_type"] == "RuntimeError"
    # the stalled service withholds the watchdog ping
    wait_for(lambda: any(e["event"].startswith("watchdog ping withheld")
                         and "flaky.stall" in e["stalled"] for e in _events(daemon)),
             15, what="watchdog withheld")
    withheld = [e for e in _events(daemon) if e["event"].startswith("watchdog ping withheld")]
    assert all(e["stalled"] == ["flaky.stall"] for e in withheld), withheld   # the rest progress
    daemon.write(logging={"level": "warning"}, daemon={"watchdog_stall_s": 1})
    r = daemon.cli("reload")
    assert r.returncode == 0 and "flaky saw level warning" in r.stdout
    assert daemon.status()["components"]["flaky"]["reloaded"] == 1
    assert daemon.stop() == 0


def test_graceful_drain_then_second_sigterm_is_immediate(daemon):
    daemon.write(daemon={"drain_timeout_s": 60})
    daemon.start(env={**ENV, "TINYTOWND_COMPONENTS": "tests.daemon.test_daemon_components:SlowDrain"})
    rpid = daemon.status()["redis"]["pid"]
    daemon.proc.send_signal(signal.SIGTERM)
    st = wait_for(lambda: (s := daemon.status())["state"] == "stopping" and s, 15, what="draining")
    assert st["components"]["slow"]["draining"] is True
    assert daemon.proc.poll() is None
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert time.monotonic() - t0 < 30
    assert any(e["event"] == "second stop request: stopping now" for e in _events(daemon))
    wait_for(lambda: not os.path.exists(f"/proc/{rpid}"), 15, what="redis gone")


def test_stop_timeout_is_75_then_stop_now(daemon):
    daemon.write(daemon={"drain_timeout_s": 60})
    daemon.start(env={**ENV, "TINYTOWND_COMPONENTS": "tests.daemon.test_daemon_components:SlowDrain"})
    r = daemon.cli("stop", "--timeout", "0.5")
    assert r.returncode == 75 and "still running" in r.stderr
    assert daemon.status()["state"] == "stopping"
    r = daemon.cli("stop", "--now", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert daemon.proc.wait(5) == 0
