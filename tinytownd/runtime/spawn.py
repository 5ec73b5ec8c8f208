"""Starting agent CLIs without stalling the event loop, and keeping their exit statuses.

Why: `os.posix_spawn` holds the GIL while the vfork'ed child runs up to its `execve`. On a small
VM that exec takes ~0.35 ms, and the whole daemon lives on one gevent thread: every round froze
every agent, the dispatcher and the heartbeats for that long (31% of the loop's py-spy samples in
an 8-agent batch of `true`; BENCHMARKS.md). glibc's posix_spawn called through ctypes.CDLL drops the
GIL, so here one native thread makes that call while the loop carries on. Everything else (file
actions, argv, envp) is prepared on the loop thread with ctypes.PyDLL calls, which keep the GIL:
the spawn thread takes the GIL twice per spawn, not a dozen times (each handoff is a context
switch on both sides). Results come back through one libev async watcher. runner.py sends a
spawn here only while other CLIs run: a quiet daemon spawns on the loop thread, one loop
iteration sooner.

The catch: libev's SIGCHLD handler (always on in gevent's default loop) reaps *any* child with
waitpid(-1) and keeps the status only for pids it watches, and a pid spawned off the loop thread
becomes known to the loop only later. `Reaper` is a catch-all child watcher (pid 0) that records
every status libev reaps, so `exit_status()` finds it whichever side reaped first.

Linux/glibc only (POSIX_SPAWN_SETSID is a GNU extension): `Spawner.get()` returns None elsewhere
and runner.py uses os.posix_spawn on the loop thread instead.
"""
from __future__ import annotations

import collections
import ctypes
import os
import time
import weakref

import gevent
from gevent.hub import Waiter

try:
    from gevent.monkey import get_original as _get_original
    _waitpid = _get_original("os", "waitpid")       # gevent's would wait on a new watcher
    _start_thread = _get_original("_thread", "start_new_thread")
except ImportError:  # pragma: no cover
    import _thread
    _waitpid = os.waitpid
    _start_thread = _thread.start_new_thread
import _queue  # the C SimpleQueue: a real blocking queue for the native thread (gevent patches queue)

# <spawn.h> (glibc): posix_spawnattr_t flags
_SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80
# opaque glibc types, over-allocated: posix_spawn_file_actions_t 80 B, posix_spawnattr_t 336 B,
# sigset_t 128 B on x86-64/aarch64
_FA_BYTES, _ATTR_BYTES, _SIGSET_BYTES = 256, 1024, 256
STATUS_KEEP_S = 30.0    # statuses nobody took (children not spawned here) are dropped after this
ENV_CACHE_MAX = 4096


class _Libc:
    """glibc's posix_spawn family: `gil` functions keep the GIL (quick calls made on the loop
    thread), `nogil.posix_spawn` drops it (made on the spawn thread). One attribute object for
    every spawn: new session, default dispositions for `sigdef`, empty signal mask."""

    def __init__(self, sigdef: tuple[int, ...]):
        # the process's own symbols include libc's (ctypes.util.find_library would run ldconfig)
        gil, nogil = ctypes.PyDLL(None, use_errno=True), ctypes.CDLL(None, use_errno=True)
        for fn in ("posix_spawn_file_actions_init", "posix_spawn_file_actions_adddup2",
                   "posix_spawn_file_actions_destroy", "posix_spawnattr_init",
                   "posix_spawnattr_setflags", "posix_spawnattr_setsigdefault",
                   "posix_spawnattr_setsigmask", "sigemptyset", "sigaddset"):
            getattr(gil, fn).restype = ctypes.c_int
        gil.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        nogil.posix_spawn.restype = ctypes.c_int
        self.gil, self.nogil = gil, nogil
        self.attr = ctypes.create_string_buffer(_ATTR_BYTES)
        if gil.posix_spawnattr_init(self.attr):
            raise OSError("posix_spawnattr_init failed")
        self._sigdefault = ctypes.create_string_buffer(_SIGSET_BYTES)
        self._sigmask = ctypes.create_string_buffer(_SIGSET_BYTES)
        gil.sigemptyset(self._sigdefault)
        gil.sigemptyset(self._sigmask)
        for s in sigdef:
            gil.sigaddset(self._sigdefault, int(s))
        if (gil.posix_spawnattr_setsigdefault(self.attr, self._sigdefault)
                or gil.posix_spawnattr_setsigmask(self.attr, self._sigmask)
                or gil.posix_spawnattr_setflags(self.attr, _SETSIGDEF | _SETSIGMASK | _SETSID)):
            raise OSError("posix_spawnattr setup failed")


class _Request:
    """One spawn, prepared on the loop thread; the spawn thread fills `err` and `pid`."""
    __slots__ = ("path", "fa", "argv", "envp", "pid", "err", "waiter", "abandoned")

    def __init__(self, libc: _Libc, path: bytes, argv: list[bytes], envp, dups):
        self.path = path
        self.fa = ctypes.create_string_buffer(_FA_BYTES)
        if libc.gil.posix_spawn_file_actions_init(self.fa):
            raise OSError("posix_spawn_file_actions_init failed")
        for src, dst in dups:
            err = libc.gil.posix_spawn_file_actions_adddup2(self.fa, src, dst)
            if err:
                libc.gil.posix_spawn_file_actions_destroy(self.fa)
                raise OSError(err, os.strerror(err))
        self.argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        self.envp = envp
        self.pid = ctypes.c_int(0)
        self.err = 0
        self.waiter = Waiter()
        self.abandoned = False     # its greenlet was killed while the thread had it


class Reaper:
    """Exit statuses of children libev reaped (catch-all child watcher on the default loop)."""

    def __init__(self, hub):
        self.statuses: dict[int, tuple[int, float]] = {}
        self._watcher = hub.loop.child(0, False)
        self._watcher.start(self._on_child, self._watcher)
        self._last_prune = time.monotonic()

    def _on_child(self, w) -> None:
        # Called by the loop for every child libev reaps; the watcher stays active.
        now = time.monotonic()
        self.statuses[w.rpid] = (w.rstatus, now)
        if now - self._last_prune > STATUS_KEEP_S / 4:   # statuses nobody took (other children)
            self._last_prune = now
            for pid in [p for p, (_s, t) in self.statuses.items() if now - t > STATUS_KEEP_S]:
                del self.statuses[pid]

    def has_exited(self, pid: int) -> bool:
        """Whether `pid` exited (its status is then kept until exit_status takes it)."""
        if pid in self.statuses:
            return True
        try:
            rpid, status = _waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return pid in self.statuses
        if rpid:
            self.statuses[pid] = (status, time.monotonic())
            return True
        return False

    def exit_status(self, pid: int) -> int | None:
        """The wait status of an exited child: reaped by libev earlier, or reaped here now.
        None if it is gone with no record (reaped by someone else)."""
        got = self.statuses.pop(pid, None)
        if got is not None:
            return got[0]
        try:
            rpid, status = _waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            got = self.statuses.pop(pid, None)
            return got[0] if got is not None else None
        return status if rpid else None


class Spawner:
    """The spawn thread of one hub (`Spawner.get()`), and its Reaper."""

    _by_hub: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, hub, sigdef: tuple[int, ...]):
        self.libc = _Libc(sigdef)
        self.reaper = Reaper(hub)
        self._todo = _queue.SimpleQueue()
        self._done: collections.deque = collections.deque()
        self._async = hub.loop.async_()
        self._async.start(self._deliver)
        self._hub = hub
        self._envs: dict[int, tuple[dict, ctypes.Array]] = {}
        _start_thread(self._thread, (self._todo, self._done, self._async, self.libc))

    @classmethod
    def get(cls, sigdef: tuple[int, ...]) -> "Spawner | None":
        """The spawner of this thread's hub, made on first use; None where unsupported."""
        hub = gevent.get_hub()
        sp = cls._by_hub.get(hub, False)
        if sp is False:
            try:
                sp = cls(hub, sigdef)
            except (OSError, AttributeError, TypeError):
                sp = None
            cls._by_hub[hub] = sp
        return sp

    @staticmethod
    def _thread(todo, done, async_, libc) -> None:
        spawn, attr, byref = libc.nogil.posix_spawn, libc.attr, ctypes.byref
        while True:
            req = todo.get()               # releases the GIL while it waits
            if req is None:
                return
            try:
                req.err = spawn(byref(req.pid), req.path, req.fa, attr, req.argv, req.envp)
            except BaseException as e:     # pragma: no cover (ctypes argument errors)
                req.err = getattr(e, "errno", None) or 22
            done.append(req)
            async_.send()

    def _deliver(self) -> None:
        # loop callback (hub greenlet): wake the greenlets whose spawn finished
        done = self._done
        while done:
            req = done.popleft()
            if not req.abandoned:
                req.waiter.switch(None)
                continue
            # nobody will run this CLI: stop it (its status goes to the Reaper and ages out)
            self.libc.gil.posix_spawn_file_actions_destroy(req.fa)
            if not req.err and req.pid.value > 0:
                try:
                    os.killpg(req.pid.value, 9)
                except OSError:
                    pass

    def _envp(self, env: dict) -> ctypes.Array:
        """env as a C envp array, kept by the dict's identity: the runtime hands the same dict
        round after round (encoding ~30 variables each time cost more than the spawn call)."""
        got = self._envs.get(id(env))
        if got is not None and got[0] is env:
            return got[1]
        if len(self._envs) >= ENV_CACHE_MAX:
            self._envs.clear()
        fs = os.fsencode
        items = [fs(k) + b"=" + fs(v) for k, v in env.items()]
        if any(b"\0" in x for x in items):
            raise ValueError("embedded null byte")
        arr = (ctypes.c_char_p * (len(items) + 1))(*items, None)
        self._envs[id(env)] = (env, arr)
        return arr

    def spawn(self, path: str, argv: list[str], env: dict, dups) -> int:
        """Spawn `path argv` with `env` (not to be modified afterwards: its encoded form is
        cached) and dups ((fd, target fd) pairs) in a new session; this greenlet waits, the
        loop does not."""
        fs = os.fsencode
        args = [fs(a) for a in argv]
        if any(b"\0" in a for a in args):      # (C strings would end there: refuse, as os.posix_spawn)
            raise ValueError("embedded null byte")
        req = _Request(self.libc, fs(path), args, self._envp(env), dups)
        self._todo.put(req)
        try:
            req.waiter.get()
        except BaseException:
            req.abandoned = True   # the thread may still be using req.fa: _deliver cleans up
            raise
        self.libc.gil.posix_spawn_file_actions_destroy(req.fa)
        if req.err:
            raise OSError(req.err, f"{os.strerror(req.err)}: {path}")
        return req.pid.value
