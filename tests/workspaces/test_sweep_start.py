"""The start-up sweep waits until the agents' settings are loaded: before that no workspace.dir
is known, and a sweep then would refuse (and record as ended, never to retry) every removal."""
import threading

import gevent.event

from tinytownd.workspaces.manager import WorkspaceManager


class _Log:
    def info(self, *a, **k):
        pass

    warning = info


def test_first_sweep_waits_for_ready():
    wm = WorkspaceManager(None, None, log=_Log())
    calls, ready = [], threading.Event()
    stopping = gevent.event.Event()

    def sweep(repos=()):
        calls.append(ready.is_set())
        stopping.set()
        return []

    wm.sweep = sweep
    g = gevent.spawn(wm.run_sweeps, lambda: {"/repo"}, stopping, ready.is_set)
    gevent.sleep(0.3)
    assert calls == []               # not ready: no sweep yet
    ready.set()
    g.join(5)
    assert calls == [True]
