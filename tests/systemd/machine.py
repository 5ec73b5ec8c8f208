"""Talking to the container of the systemd suite (booted by scripts/test-systemd with box.sh).

Every helper runs a command inside the container through `box.sh exec` and fails the test with
the command's output when it fails. Nothing here starts anything on the host.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess

import yaml

from tests.support.helpers import ROOT, wait_for

BOX = ROOT / "tests" / "systemd" / "box.sh"
MAIN_CFG = "/etc/tinytownd/tinytownd.yaml"


def state() -> str:
    st = os.environ.get("TT_BOX_STATE")
    assert st, "TT_BOX_STATE is not set: run this suite with scripts/test-systemd"
    return st


def sh(script: str, *, check: bool = True, timeout: float = 60.0,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a bash script as root inside the container."""
    r = subprocess.run([str(BOX), "exec", state(), "bash", "-euo", "pipefail", "-c", script],
                       capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        why = ""
        if "systemctl" in script:     # what systemd and the daemon said about it
            j = subprocess.run([str(BOX), "exec", state(), "journalctl", "-n", "60", "--no-pager",
                                "-o", "short-precise"], capture_output=True, text=True, timeout=30)
            why = "\n--- journal (last 60 lines) ---\n" + j.stdout
        raise AssertionError(f"exit {r.returncode} in the container:\n$ {script}\n"
                             f"{r.stdout}{r.stderr}{why}")
    return r


def out(script: str, **kw) -> str:
    return sh(script, **kw).stdout.strip()


def show(unit: str, *props: str) -> dict[str, str]:
    """`systemctl show -p …` as a dict."""
    text = out(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def main_pid(unit: str) -> int:
    return int(show(unit, "MainPID")["MainPID"])


def alive(pid: int) -> bool:
    return sh(f"kill -0 {pid}", check=False).returncode == 0


def tt(cfg: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The tinytownd CLI as the service user (as an operator would run it)."""
    quoted = " ".join(shlex.quote(a) for a in args)
    return sh(f"runuser -u tinytownd -- tinytownd {quoted} -c {cfg}", check=check)


def tt_json(cfg: str, *args: str):
    return json.loads(tt(cfg, *args, "--json").stdout)


def wait_until(pred, timeout: float = 30.0, what: str = "condition"):
    """tests.support's wait_for, polling less often: every poll is a process in the container."""
    return wait_for(pred, timeout=timeout, interval=0.2, what=what)


def write_config(path: str, overrides: dict) -> dict:
    """etc/tinytownd.yaml (every key at its default) with `overrides` merged in, installed at
    `path` as the README installs the config (mode 640, group tinytownd). Returns the dict."""
    data = yaml.safe_load((ROOT / "etc" / "tinytownd.yaml").read_text())
    _merge(data, overrides)
    sh(f"umask 027; cat > {path}.new; chgrp tinytownd {path}.new; mv {path}.new {path}",
       input=yaml.safe_dump(data, sort_keys=False))
    return data


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def mark() -> int:
    """Now, in the container's clock (µs): journal(since=mark()) returns what came after it."""
    return int(out("date +%s%6N"))


def journal(unit: str, since: int | None = None, *, pid: int | None = None) -> list[dict]:
    """The unit's journal entries (systemd's own and the service's), as journalctl -o json.
    (Filtered here by __REALTIME_TIMESTAMP: --after-cursor together with _PID= missed entries.)"""
    args = f"-u {unit} -o json --no-pager" + (f" _PID={pid}" if pid else "")
    entries = [json.loads(line) for line in out(f"journalctl {args}").splitlines() if line]
    return [e for e in entries if since is None or int(e["__REALTIME_TIMESTAMP"]) >= since]


def messages(entries: list[dict]) -> list[str]:
    return [e["MESSAGE"] if isinstance(e.get("MESSAGE"), str) else "" for e in entries]


def restart_count(unit: str) -> int:
    return int(show(unit, "NRestarts")["NRestarts"])


def wait_active(unit: str, timeout: float = 60.0) -> dict:
    """Wait until the unit is active (running); returns its state, MainPID and NRestarts."""
    def running():
        s = show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
        return s if (s["ActiveState"], s["SubState"]) == ("active", "running") else None
    return wait_until(running, timeout, f"{unit} active (running)")


def wait_restarted(unit: str, restarts_before: int, timeout: float = 60.0) -> dict:
    """Wait until systemd restarted the unit once more and it is active (running) again."""
    def restarted():
        s = show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
        return s if int(s["NRestarts"]) > restarts_before and \
            (s["ActiveState"], s["SubState"]) == ("active", "running") else None
    return wait_until(restarted, timeout, f"{unit} restarted by systemd")


def task_state(cfg: str, tid: str) -> str | None:
    r = tt(cfg, "task", "show", tid, "--json", check=False)
    return json.loads(r.stdout).get("state") if r.returncode == 0 else None


def wait_task(cfg: str, tid: str, timeout: float = 30.0) -> dict:
    """Wait until the task is completed or failed; returns it (`task show --json`)."""
    def done():
        t = tt_json(cfg, "task", "show", tid)
        return t if t.get("state") in ("completed", "failed") else None
    return wait_until(done, timeout, f"task {tid} done")


def assign_and_complete(cfg: str, agent: str, text: str) -> str:
    """Assign a task and wait until it is completed; returns its id."""
    tid = tt(cfg, "assign", agent, text).stdout.strip()
    task = wait_task(cfg, tid)
    assert task["state"] == "completed", task
    return tid


def wait_journal(unit: str, needle: str, since: int | None = None, *, pid: int | None = None,
                 timeout: float = 10.0) -> list[str]:
    """The unit's journal messages once one of them contains `needle` (journald may lag)."""
    def found():
        ms = messages(journal(unit, since, pid=pid))
        return ms if any(needle in m for m in ms) else None
    return wait_until(found, timeout, f"{needle!r} in the journal")
