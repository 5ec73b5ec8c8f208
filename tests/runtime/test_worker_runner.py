"""runner.run: the CLI subprocess contract (stdin prompt, cwd, env, log, exit codes, timeouts)."""
import os

import pytest

from tinytownd.runtime import process, runner


@pytest.fixture(autouse=True, params=["spawn-thread", "loop-thread"])
def spawn_path(request, monkeypatch):
    """Every contract test runs on both spawn paths: the spawn thread (tinytownd/spawn.py) and
    os.posix_spawn on the loop thread (the fallback)."""
    monkeypatch.setattr(process, "SPAWN_THREAD", request.param == "spawn-thread")
    monkeypatch.setattr(process, "THREAD_WHEN_RUNNING", 0)   # (not only when busy)
    return request.param


def _run(tmp, command, prompt="hello", **kw):
    log = str(tmp / "round.log")
    kw.setdefault("timeout_s", 10)
    kw.setdefault("tail_bytes", 4000)
    res = runner.run(command, prompt=prompt, env={**os.environ, "X_VAR": "xv"}, cwd=str(tmp),
                     log_path=log, **kw)
    return res, res.output


def test_prompt_cwd_env_and_exit_code(tmpdir_short):
    res, out = _run(tmpdir_short, 'cat; echo; pwd; echo "$X_VAR"; exit 4', prompt="the prompt")
    assert res.exit_code == 4 and not res.ok and not res.timed_out
    assert out.split("\n") == ["the prompt", str(tmpdir_short), "xv"]


def test_big_prompt_not_read_is_fine(tmpdir_short):
    res, out = _run(tmpdir_short, "echo ignored-stdin", prompt="x" * 1_000_000)
    assert res.ok and out == "ignored-stdin"
    res, out = _run(tmpdir_short, "wc -c", prompt="y" * 300_000)
    assert res.ok and out.endswith("300000")


def test_bad_cwd_and_spawn_errors(tmpdir_short):
    log = str(tmpdir_short / "r.log")
    res = runner.run("true", prompt="", env=dict(os.environ), cwd=str(tmpdir_short / "nope"),
                     log_path=log, timeout_s=5)
    assert res.exit_code == 127
    res = runner.run("echo x", prompt="", env=dict(os.environ), cwd=str(tmpdir_short),
                     log_path=str(tmpdir_short / "no" / "such" / "\0bad"), timeout_s=5,
                     tail_bytes=100)
    assert res.ok and res.output == "x" and res.log_error   # no log: the round still ran
    res = runner.run("tr\0ue", prompt="", env=dict(os.environ), cwd=".", log_path=log,
                     timeout_s=5)
    assert res.exit_code is None and res.error


def test_should_stop_kills_group(tmpdir_short):
    flag = {"stop": False}
    import gevent
    gevent.spawn_later(0.3, lambda: flag.__setitem__("stop", True))
    res, _ = _run(tmpdir_short, "sleep 30 & sleep 30", should_stop=lambda: flag["stop"],
                  poll_s=0.05)
    assert res.killed and res.duration_s < 10
    assert _live_in_group(res.pid) == []


def _live_in_group(pgid):
    """Non-zombie processes of a process group (a zombie reparented to init counts as gone)."""
    import time
    deadline = time.monotonic() + 5
    while True:
        live = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(st[2]) == pgid and st[0] != "Z":
                live.append(int(d))
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.05)


def test_result_tail_trims_to_whole_lines(tmpdir_short):
    res, _ = _run(tmpdir_short, "seq 1 1000 | sed 's/^/line /'", tail_bytes=30)
    assert res.output.split("\n")[0].startswith("line ") and res.output.endswith("line 1000")


def test_exit_status_survives_libev_reaping_the_child(tmpdir_short):
    """With a gevent.subprocess child alive (the daemon's redis child), libev's SIGCHLD handler
    reaps *every* child with waitpid(-1). gevent records those statuses and its patched
    os.waitpid returns them, so a posix_spawn'ed CLI reaped that way still reports its real exit
    status, not a spurious failure (which would retry a task that succeeded)."""
    import gevent
    import gevent.subprocess

    keeper = gevent.subprocess.Popen(["sleep", "30"])   # installs libev's SIGCHLD child reaping
    try:
        log = str(tmpdir_short / "r.log")
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc, w = process.spawn("exit 3", dict(os.environ), str(tmpdir_short), fd)
        finally:
            os.close(fd)
        os.close(w)
        # Let the child exit and the hub run its SIGCHLD handler before we wait.
        deadline = 50
        while deadline and os.path.exists(f"/proc/{proc.pid}") and \
                "Z" not in open(f"/proc/{proc.pid}/stat").read().split()[2]:
            gevent.sleep(0.02)
            deadline -= 1
        gevent.sleep(0.1)
        assert proc.wait(5)
        assert proc.returncode == 3
    finally:
        keeper.kill()
        keeper.wait()
