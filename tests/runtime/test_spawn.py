"""The spawn thread (tinytownd/spawn.py) under load, cancellation and env reuse, through
runner.run, the way workers use it."""
import os
import time

import gevent
import pytest

from tinytownd.runtime import process, runner, spawn


@pytest.fixture(autouse=True)
def always_on_the_spawn_thread(monkeypatch):
    """runner uses the spawn thread only while other CLIs run; here, for every spawn."""
    monkeypatch.setattr(process, "THREAD_WHEN_RUNNING", 0)


def _run(tmp, command, name="r", **kw):
    kw.setdefault("timeout_s", 20)
    kw.setdefault("env", dict(os.environ))
    return runner.run(command, prompt=kw.pop("prompt", ""), cwd=str(tmp),
                      log_path=str(tmp / f"{name}.log"), **kw)


def test_many_concurrent_rounds_keep_their_own_exit_status(tmpdir_short):
    """40 greenlets x 5 rounds, each exiting with its own code: the statuses libev reaped early
    (the catch-all Reaper) and the ones reaped by exit_status both come back right."""
    got = {}

    def agent(i):
        for j in range(5):
            code = (i * 5 + j) % 200
            res = _run(tmpdir_short, f"exit {code}", name=f"a{i}-{j}")
            got[(i, j)] = (res.exit_code, code)

    gevent.joinall([gevent.spawn(agent, i) for i in range(40)], raise_error=True)
    assert len(got) == 200
    assert all(a == b for a, b in got.values()), [k for k, (a, b) in got.items() if a != b]


def test_exports_and_env_reuse(tmpdir_short):
    env = dict(os.environ, X_VAR="one")
    res = _run(tmpdir_short, 'echo "$X_VAR $TINYTOWN_TASK_ID"', env=env,
               exports={"TINYTOWN_TASK_ID": "t-1"}, tail_bytes=100)
    assert res.ok and res.output == "one t-1"
    res = _run(tmpdir_short, 'echo "$X_VAR $TINYTOWN_TASK_ID"', env=env,      # same dict again
               exports={"TINYTOWN_TASK_ID": "t 2'x"}, tail_bytes=100, name="r2")
    assert res.output == "one t 2'x"
    env2 = dict(env, X_VAR="two")                                              # a new dict
    res = _run(tmpdir_short, 'echo "$X_VAR"', env=env2, tail_bytes=100, name="r3")
    assert res.output == "two"


def test_empty_round_log_is_removed_and_output_comes_from_the_fd(tmpdir_short):
    res = _run(tmpdir_short, "true", name="quiet")
    assert res.ok and res.log_bytes == 0 and not (tmpdir_short / "quiet.log").exists()
    res = _run(tmpdir_short, "seq 1 2000", tail_bytes=20, name="loud")
    assert res.ok and res.log_bytes == res.output_bytes > 8000
    assert res.output.split("\n")[-1] == "2000" and res.output.split("\n")[0].isdigit()
    assert (tmpdir_short / "loud.log").stat().st_size == res.output_bytes


def _children_alive():
    me = str(os.getpid())
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if st[1] == me and st[0] != "Z":
                out.append(int(d))
    return out


def test_rounds_killed_while_spawning_leave_nothing_behind(tmpdir_short):
    """Greenlets killed at once (shutdown) while the thread may be spawning for them: their CLIs
    are stopped, and the spawner keeps working."""
    before = set(_children_alive())
    gs = [gevent.spawn(_run, tmpdir_short, "sleep 30", name=f"k{i}") for i in range(20)]
    gevent.sleep(0)
    gevent.killall(gs, timeout=10)
    deadline = time.monotonic() + 10
    while set(_children_alive()) - before and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert set(_children_alive()) - before == set()
    assert _run(tmpdir_short, "exit 7", name="after").exit_code == 7


def test_spawn_thread_is_used_where_available(tmpdir_short, monkeypatch):
    sp = spawn.Spawner.get(process._SIGDEF)
    if sp is None:
        pytest.skip("no glibc posix_spawn here")
    calls = []
    real = sp.spawn
    monkeypatch.setattr(sp, "spawn", lambda *a: calls.append(a[1]) or real(*a))
    monkeypatch.setattr(os, "posix_spawn", None)   # the loop-thread path would fail loudly
    res = _run(tmpdir_short, "exit 5", name="used")
    assert res.exit_code == 5 and len(calls) == 1 and "exit 5" in calls[0][-1]


def test_quiet_spawns_stay_on_the_loop_busy_ones_go_to_the_thread(tmpdir_short, monkeypatch):
    sp = spawn.Spawner.get(process._SIGDEF)
    if sp is None:
        pytest.skip("no glibc posix_spawn here")
    monkeypatch.setattr(process, "THREAD_WHEN_RUNNING", 2)
    calls = []
    real = sp.spawn
    monkeypatch.setattr(sp, "spawn", lambda *a: calls.append(a[1]) or real(*a))
    assert _run(tmpdir_short, "exit 3", name="quiet").exit_code == 3
    assert calls == []                                   # nothing else running: loop thread
    bg = [gevent.spawn(_run, tmpdir_short, "sleep 1", name=f"bg{i}") for i in range(2)]
    deadline = time.monotonic() + 10
    while process.running < 2 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert _run(tmpdir_short, "exit 4", name="busy").exit_code == 4
    assert len(calls) == 1                               # two rounds running: spawn thread
    gevent.joinall(bg, raise_error=True)
    assert process.running == 0
