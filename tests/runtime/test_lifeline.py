"""The lifeline: a CLI never outlives its daemon, whether the watcher was told of its group yet
(told lazily, at most every FLUSH_S) or not (then the TINYTOWND_LIFELINE marker in its
environment names it), and a daemon starting on the same root ends what an earlier daemon's CLIs
left running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.helpers import wait_for
from tinytownd.runtime import lifeline as lifeline_mod
from tinytownd.runtime.lifeline import Lifeline


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cli(env: dict) -> int:
    """A CLI-like group whose daemon is gone: a shell leading its own session, with a
    background child, orphaned (as a dead daemon's CLIs are). Its pid."""
    code = ("import subprocess as s; print(s.Popen(['sh', '-c', 'sleep 300 & sleep 300'], "
            "start_new_session=True, stdin=s.DEVNULL, stdout=s.DEVNULL, stderr=s.DEVNULL).pid)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    pid = int(out)
    return pid


def _reap(*pids):
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def test_a_cli_the_watcher_was_not_told_of_yet_ends_with_the_daemon(tmpdir_short):
    ll = Lifeline(tmpdir_short)
    p = _cli({**os.environ, "TINYTOWND_LIFELINE": ll.marker})
    try:
        ll.track(p)
        ll.cut()                    # before the flush: only the marker names it
        wait_for(lambda: not _alive(p), 10, what="the marked CLI ended")
    finally:
        ll.close()
        _reap(p)


def test_a_told_group_ends_even_without_the_marker(tmpdir_short):
    ll = Lifeline(tmpdir_short)
    env = {k: v for k, v in os.environ.items() if k != "TINYTOWND_LIFELINE"}
    p = _cli(env)
    try:
        ll.track(p)
        ll.flush()
        ll.cut()
        wait_for(lambda: not _alive(p), 10, what="the told group ended")
    finally:
        ll.close()
        _reap(p)


def test_quick_rounds_cost_no_write_and_other_roots_are_left_alone(tmpdir_short, monkeypatch):
    writes = []
    ll = Lifeline(tmpdir_short / "a")
    monkeypatch.setattr(ll, "_say", writes.append)
    for pid in range(100000, 100050):      # started and ended between two flushes
        ll.track(pid)
        ll.untrack(pid)
    ll.flush()
    assert writes == []
    other = Lifeline(tmpdir_short / "b")
    p = _cli({**os.environ, "TINYTOWND_LIFELINE": other.marker})
    try:
        ll.close()                        # another root's daemon: not ours to end
        assert _alive(p)
    finally:
        other.cut()
        wait_for(lambda: not _alive(p), 10, what="ended with its own daemon")
        other.close()
        _reap(p)


def test_a_daemon_starting_on_the_root_ends_an_earlier_daemons_marked_clis(tmpdir_short):
    key = lifeline_mod.root_key(tmpdir_short)
    p = _cli({**os.environ, "TINYTOWND_LIFELINE": f"{key}:1-dead"})   # its daemon is gone
    try:
        ll = Lifeline(tmpdir_short)
        wait_for(lambda: not _alive(p), 10, what="the earlier daemon's CLI ended")
        ll.close()
    finally:
        _reap(p)
