"""systemd/tinytownd.service and tinytownd@.service under a real systemd (PID 1 of a container).

The session fixture (conftest.py) installs tinytownd and the units with the README's own commands,
ending with `systemctl enable --now tinytownd`. The tests run in file order on that one machine;
each writes the config it needs. Most use `appendonly: false` with the default RDB save points,
so a crash that does not let Redis save on the way out loses the writes since the last snapshot.
"""
from __future__ import annotations

import json
import re
import time

from tests.systemd.machine import (MAIN_CFG, alive, assign_and_complete, journal, main_pid,
                                   mark, messages, out, restart_count, sh, show, task_state, tt,
                                   tt_json, wait_active, wait_journal, wait_restarted, wait_task,
                                   write_config)

UNIT = "tinytownd.service"
ECHO_AGENT = {"agent_clis": {"echo": "cat >/dev/null; echo done"},
              "agents": [{"name": "w", "cli": "echo"}]}
# The set-up: RDB save points on (the defaults), no AOF.
MAIN = {"town": {"root": "/var/lib/tinytownd"}, "redis": {"appendonly": False}, **ECHO_AGENT}
REDIS_LOG = "/var/lib/tinytownd/redis/redis.log"


def restart_with(overrides: dict, unit: str = UNIT, cfg: str = MAIN_CFG) -> dict:
    write_config(cfg, overrides)
    sh(f"systemctl restart {unit}", timeout=120)
    return wait_active(unit)


def redis_pid(cfg: str = MAIN_CFG) -> int:
    pid = tt_json(cfg, "status")["redis"]["pid"]
    assert pid, "the daemon reports no redis-server child"
    return int(pid)


def redis_log_of(pid: int) -> str:
    """What one redis-server process wrote to redis.log (its lines start with `<pid>:`)."""
    return "\n".join(line for line in out(f"cat {REDIS_LOG}").splitlines()
                     if line.startswith(f"{pid}:"))


def in_cgroup(pid: int, cgroup: str) -> bool:
    return sh(f"grep -qx '[0-9]*:[^:]*:{cgroup}' /proc/{pid}/cgroup", check=False).returncode == 0


# --------------------------------------------------------------------------- start, journald
def test_start_ready_and_status_text():
    st = show(UNIT, "Type", "ActiveState", "SubState", "StatusText", "MainPID", "ControlGroup")
    # Type=notify: the unit is active only once the daemon sent READY=1.
    assert (st["Type"], st["ActiveState"], st["SubState"]) == ("notify", "active", "running")
    assert st["StatusText"] == "running town tinytown"                       # STATUS=
    assert 'Status: "running town tinytown"' in out(f"systemctl status {UNIT} --no-pager")
    # its redis-server child runs inside the unit's cgroup, next to the main process
    assert in_cgroup(int(st["MainPID"]), st["ControlGroup"])
    assert in_cgroup(redis_pid(), st["ControlGroup"])
    # root outside the sandbox (PrivateUsers=) may still use the control socket
    assert sh(f"tinytownd status -c {MAIN_CFG}").returncode == 0


def test_journald_gets_the_json_lines():
    pid = main_pid(UNIT)
    wait_journal(UNIT, '"event":"ready"', pid=pid)
    events = []
    for e in journal(UNIT, pid=pid):
        assert e.get("SYSLOG_IDENTIFIER") == "tinytownd", e
        line = json.loads(e["MESSAGE"])             # every line of the daemon is a JSON object
        assert {"event", "level", "timestamp"} <= line.keys(), line
        events.append(line["event"])
    assert {"starting", "redis-server ready", "ready"} <= set(events), events


def test_security_exposure():
    scores = {}
    for unit in (UNIT, "tinytownd@web.service"):
        text = out(f"systemd-analyze security {unit} --no-pager")
        scores[unit] = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", text)[1])
    print("systemd-analyze security:", scores)
    for unit, score in scores.items():
        assert score <= 2.0, f"{unit}: exposure {score} (> 2.0)"
    r = sh("systemd-analyze verify tinytownd.service tinytownd@web.service", check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


# --------------------------------------------------------------------------- reload
def test_reload_applies_a_valid_config():
    restart_with(MAIN)
    pid, before = main_pid(UNIT), tt_json(MAIN_CFG, "status")
    assert before["log_level"] == "info"
    c = mark()
    write_config(MAIN_CFG, {**MAIN, "logging": {"level": "debug"}})
    sh(f"systemctl reload {UNIT}")                  # synchronous: applied when it returns
    after = tt_json(MAIN_CFG, "status")
    assert after["log_level"] == "debug" and after["reloads"] == before["reloads"] + 1
    assert main_pid(UNIT) == pid and show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert show(UNIT, "StatusText")["StatusText"] == "running town tinytown (reloads: 1)"
    line = next(json.loads(m) for m in wait_journal(UNIT, '"event":"reloaded"', c, pid=pid)
                if '"event":"reloaded"' in m)
    assert any(ch.startswith("logging.level") for ch in line["changes"]), line


def test_reload_refuses_an_invalid_config_and_keeps_the_old_one():
    pid, before = main_pid(UNIT), tt_json(MAIN_CFG, "status")
    write_config(MAIN_CFG, {**MAIN, "logging": {"level": "warning"}, "bogus": 1})
    r = sh(f"systemctl reload {UNIT}", check=False)
    assert r.returncode != 0, "systemctl reload accepted an invalid config"
    assert show(UNIT, "ActiveState")["ActiveState"] == "active" and main_pid(UNIT) == pid
    after = tt_json(MAIN_CFG, "status")
    assert after["log_level"] == before["log_level"] == "debug"     # none of it applied
    assert after["reloads"] == before["reloads"]
    assert show(UNIT, "StatusText")["StatusText"].startswith("reload failed")
    write_config(MAIN_CFG, MAIN)
    sh(f"systemctl reload {UNIT}")


# --------------------------------------------------------------------------- agents in the sandbox
TOOLS = {   # agent CLI: (command, what its result must contain)
    "sh": ("cat >/dev/null; echo sh-ok $(id -un)", "sh-ok tinytownd"),
    "python": ("python3 -c 'import multiprocessing as mp, subprocess, tempfile; "
               "print(\"py-ok\", sum(mp.Pool(2).map(abs, [-1, -2])), "
               "subprocess.check_output([\"true\"]) == b\"\", bool(tempfile.mkstemp()))'",
               "py-ok 3 True True"),
    "node": ("node -e 'const os = require(\"os\"), fs = require(\"fs\"); "
             "fs.mkdirSync(os.homedir() + \"/.cache/node-agent\", {recursive: true}); "
             "console.log(\"node-ok\", require(\"child_process\").execSync(\"echo child\")"
             ".toString().trim())'", "node-ok child"),
    "git": ("rm -rf repo && git init -q repo && cd repo && echo x > f && git add f && "
            "git -c user.email=a@example.org -c user.name=a commit -qm x && "
            "echo git-ok $(git rev-list --count HEAD)", "git-ok 1"),
}


def tools_config(name: str, root: str) -> dict:
    return {"town": {"name": name, "root": root}, "redis": {"appendonly": False},
            "agent_clis": {cli: cmd for cli, (cmd, _) in TOOLS.items()},
            "agents": [{"name": cli, "cli": cli} for cli in TOOLS]}


def check_tools(cfg: str) -> None:
    tids = {cli: tt(cfg, "assign", cli, f"run {cli}").stdout.strip() for cli in TOOLS}
    for cli, tid in tids.items():
        task = wait_task(cfg, tid, 60)
        assert task["state"] == "completed" and TOOLS[cli][1] in task.get("result", ""), \
            (cli, task)


def test_agent_clis_work_in_the_sandbox():
    """Shells, python (multiprocessing), node and git as agent CLIs, under the unit's hardening."""
    restart_with(tools_config("tinytown", "/var/lib/tinytownd"))
    check_tools(MAIN_CFG)


# --------------------------------------------------------------------------- crash, watchdog
def test_kill_9_of_the_main_process_loses_no_completed_task():
    restart_with(MAIN)
    tid = assign_and_complete(MAIN_CFG, "w", "done before the crash")
    pid, rpid, n = main_pid(UNIT), redis_pid(), restart_count(UNIT)
    c = mark()
    sh(f"kill -9 {pid}")
    st = wait_restarted(UNIT, n)                    # Restart=on-failure
    assert int(st["MainPID"]) != pid
    assert task_state(MAIN_CFG, tid) == "completed", \
        "the completed task is gone after kill -9 and the restart: redis-server did not save"
    assert not alive(rpid), "the old redis-server is still running"
    assert "DB saved on disk" in redis_log_of(rpid)
    log = messages(journal(UNIT, c))
    assert not [m for m in log if "with signal SIGKILL" in m], log


def test_watchdog_restarts_a_stopped_daemon():
    dropin = "/etc/systemd/system/tinytownd.service.d/50-test-watchdog.conf"
    sh(f"mkdir -p {dropin.rsplit('/', 1)[0]} && printf '[Service]\\nWatchdogSec=3\\n' > {dropin}"
       " && systemctl daemon-reload")
    try:
        restart_with(MAIN)
        tid = assign_and_complete(MAIN_CFG, "w", "done before the watchdog fired")
        pid, n = main_pid(UNIT), restart_count(UNIT)
        c = mark()
        sh(f"kill -STOP {pid}")                     # no more WATCHDOG=1
        st = wait_restarted(UNIT, n)
        assert int(st["MainPID"]) != pid and not alive(pid)
        log = messages(journal(UNIT, c))
        assert [m for m in log if "Watchdog timeout" in m], log
        assert [m for m in log if "Failed with result 'watchdog'" in m], log
        assert task_state(MAIN_CFG, tid) == "completed", "the watchdog restart lost a task"
    finally:
        sh(f"rm -f {dropin} && systemctl daemon-reload")


# --------------------------------------------------------------------------- stop
def test_stop_is_clean():
    restart_with(MAIN)
    tid = assign_and_complete(MAIN_CFG, "w", "done before the stop")
    pid, rpid = main_pid(UNIT), redis_pid()
    c = mark()
    t0 = time.monotonic()
    sh(f"systemctl stop {UNIT}", timeout=120)
    assert time.monotonic() - t0 < 30, "the stop waited for a timeout"
    st = show(UNIT, "ActiveState", "Result")
    assert (st["ActiveState"], st["Result"]) == ("inactive", "success"), st
    assert not alive(pid) and not alive(rpid)
    assert sh("pgrep -u tinytownd", check=False).returncode == 1, "processes left behind"
    assert "DB saved on disk" in redis_log_of(rpid)
    log = messages(journal(UNIT, c))
    assert f"tinytownd: stopped (pid {pid})" in log, log       # ExecStop stopped it
    assert not [m for m in log if "Killing process" in m], log
    events = [json.loads(m)["event"] for m in log if m.startswith("{")]
    assert {"draining", "redis-server stopped", "stopped"} <= set(events), events
    sh(f"systemctl start {UNIT}", timeout=120)
    wait_active(UNIT)
    assert task_state(MAIN_CFG, tid) == "completed"


# --------------------------------------------------------------------------- template + plain unit
WEB = "tinytownd@web.service"
WEB_CFG = "/etc/tinytownd/web.yaml"
DIR_KINDS = {"StateDirectory": "/var/lib", "RuntimeDirectory": "/run", "LogsDirectory": "/var/log",
             "CacheDirectory": "/var/cache", "ConfigurationDirectory": "/etc"}


def managed_dirs(unit: str) -> list[str]:
    """The directories systemd creates for the unit (and removes or cleans: RuntimeDirectory= at
    every stop, all of them on `systemctl clean`)."""
    props = show(unit, *DIR_KINDS)
    return [f"{DIR_KINDS[k]}/{d}" for k, v in props.items() for d in v.split()]


def test_template_runs_next_to_the_plain_unit():
    restart_with(MAIN)
    web_root = "/var/lib/" + show(WEB, "StateDirectory")["StateDirectory"]   # the town root
    # a second town on the same host needs its own HTTP port (the default 8474 is the first's)
    web_http = {"http": {"listen": "127.0.0.1:8475"}}
    write_config(WEB_CFG, {"town": {"name": "web", "root": web_root},
                           "redis": {"appendonly": False}, **web_http, **ECHO_AGENT})
    sh(f"systemctl start {WEB}", timeout=120)
    wait_active(WEB)
    web_task = assign_and_complete(WEB_CFG, "w", "web task")
    assign_and_complete(MAIN_CFG, "w", "main task")
    plain, web = managed_dirs(UNIT), managed_dirs(WEB)
    for a in plain:                                 # no directory inside the other unit's
        for b in web:
            assert a != b and not a.startswith(b + "/") and not b.startswith(a + "/"), (a, b)
    for d in plain + web:                           # every declared directory is used
        assert out(f"ls -A {d}"), f"{d} is declared but stays empty"
    web_files = out(f"cd {web_root} && find . | sort")
    # Restarting, stopping and cleaning the plain unit leaves the instance alone ...
    sh(f"systemctl restart {UNIT}", timeout=120)
    wait_active(UNIT)
    sh(f"systemctl stop {UNIT} && systemctl clean --what=all {UNIT}", timeout=120)
    assert show(WEB, "ActiveState")["ActiveState"] == "active"
    assert out(f"cd {web_root} && find . | sort") == web_files
    assert tt(WEB_CFG, "status").returncode == 0
    assert task_state(WEB_CFG, web_task) == "completed"
    # ... whose agents have a HOME of their own to write to (node creates ~/.cache/…) ...
    restart_with({**tools_config("web", web_root), **web_http}, WEB, WEB_CFG)
    check_tools(WEB_CFG)
    assert out(f"ls -A {web_root}/.cache")
    # ... and the other way round.
    sh(f"systemctl start {UNIT}", timeout=120)
    wait_active(UNIT)
    sh(f"systemctl stop {WEB}", timeout=120)
    assert show(WEB, "Result")["Result"] == "success"
    assert show(UNIT, "ActiveState")["ActiveState"] == "active"
    assert tt(MAIN_CFG, "status").returncode == 0
