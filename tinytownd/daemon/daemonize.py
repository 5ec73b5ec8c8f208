"""`tinytownd run --daemonize`: detach with python-daemon BEFORE gevent is imported (a fork after
gevent has started its hub and threads leaves the child with a broken loop). Stdlib + python-daemon
only.

The invoking process stays until the daemon is up: it forks, the child detaches (double fork +
setsid through DaemonContext) and reports back through a pipe (fd in $TINYTOWND_READY_FD) either
"OK" once READY or "ERR <code> <message>" — so `run --daemonize` exits 0 only when the daemon
runs, and with the daemon's exit code (73 pidfile held, 69 Redis, 78 config) otherwise.
"""
from __future__ import annotations

import os
import sys

READY_FD_ENV = "TINYTOWND_READY_FD"


def _fail(code: int, msg: str) -> None:
    print(f"tinytownd: {msg}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(code)


def detach(args) -> None:
    """Returns only in the detached daemon process; the invoking process exits with its status."""
    from tinytownd import exitcodes
    from tinytownd.config import ConfigError, load
    from tinytownd.daemon.pidfile import PidFile, PidFileHeld

    try:
        cfg = load(args.config)
    except ConfigError as e:
        _fail(exitcodes.CONFIG, str(e))
    args.config = os.path.abspath(cfg.path)   # the daemon chdir()s to the town root
    pid_path = args.pidfile or (str(cfg.resolve(cfg.daemon.pidfile)) if cfg.daemon.pidfile
                                else str(cfg.root / "tinytownd.pid"))
    args.pidfile = os.path.abspath(pid_path)
    pf = PidFile(args.pidfile)
    holder = pf.held_by()
    if holder:
        _fail(exitcodes.CANTCREAT, f"{args.pidfile} is locked: tinytownd already runs (pid {holder})")
    from tinytownd.daemon.control import SocketInUse, check_free
    try:
        check_free(cfg.control_socket_path)
    except SocketInUse as e:
        _fail(exitcodes.CANTCREAT, str(e))
    except OSError:
        pass
    logs_dir = cfg.logs_dir
    logs_dir.mkdir(parents=True, exist_ok=True)
    args.log_file_default = str(logs_dir / "tinytownd.log")
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() > 0:
        os.close(w)
        _wait_for_daemon(r, args.pidfile)   # never returns
    os.close(r)
    import daemon  # python-daemon

    stderr = open(logs_dir / "tinytownd.stderr", "a", buffering=1)
    ctx = daemon.DaemonContext(detach_process=True, signal_map={}, umask=0o027,
                               working_directory=str(cfg.root), prevent_core=False,
                               files_preserve=[w], stderr=stderr, pidfile=None)
    ctx.open()
    try:
        pf.acquire()
    except PidFileHeld as e:
        os.write(w, f"ERR {exitcodes.CANTCREAT} {e}\n".encode())
        os._exit(exitcodes.CANTCREAT)
    args.pidfile_obj = pf
    os.environ[READY_FD_ENV] = str(w)
    args.daemonized = True


def _wait_for_daemon(r: int, pidfile: str) -> None:
    from tinytownd import exitcodes

    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    text = data.decode(errors="replace").strip()
    if text.startswith("OK"):
        print(f"tinytownd: running in the background (pid {text[2:].strip()}, pidfile {pidfile})")
        sys.stdout.flush()
        os._exit(exitcodes.OK)
    if text.startswith("ERR"):
        _, code, msg = (text.split(" ", 2) + ["", ""])[:3]
        _fail(int(code) if code.isdigit() else exitcodes.UNAVAILABLE, msg)
    _fail(exitcodes.UNAVAILABLE, "the daemon exited during startup (see logs/tinytownd.stderr "
                                 "and logs/tinytownd.log under the town root)")


def notify_parent(code: int, message: str = "") -> None:
    """In a daemonized process: tell the waiting `run --daemonize` how startup went. Else no-op."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if not fd or not fd.isdigit():
        return
    line = f"OK {os.getpid()}\n" if code == 0 else f"ERR {code} {message}\n"
    try:
        os.write(int(fd), line.encode())
        os.close(int(fd))
    except OSError:
        pass
