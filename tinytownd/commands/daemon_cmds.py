"""Daemon lifecycle commands: run, status, reload, stop, check-config.

Top level imports: stdlib + tinytownd.cli only (run --daemonize forks before gevent is imported).
"""
from __future__ import annotations

import json
import sys
import time

from tinytownd import cli

RUN_CODES = "exit codes: 0 stopped cleanly, 69 Redis unavailable, 73 another instance runs, 78 invalid config"


def register(sub) -> None:
    p = sub.add_parser("run", help="run the daemon (foreground; --daemonize to detach)",
                       description="Run the daemon. Foreground by default (systemd Type=notify).",
                       epilog=RUN_CODES)
    cli.add_config_arg(p)
    p.add_argument("--daemonize", action="store_true",
                   help="detach into the background (python-daemon); writes and locks the pidfile")
    p.add_argument("--pidfile", metavar="PATH",
                   help="pidfile to write and lock (default with --daemonize: daemon.pidfile, "
                        "else <town root>/tinytownd.pid)")
    p.set_defaults(handler="tinytownd.commands.daemon_cmds:cmd_run")

    p = sub.add_parser("status", help="ask the running daemon for its status",
                       epilog="exit codes: 0 running (also when its Redis is unreachable: "
                              "the output says so), 3 not running, 4 a daemon listens but did not "
                              "answer in time, 77 permission denied, 78 invalid config")
    cli.add_config_arg(p)
    cli.add_json_arg(p)
    p.add_argument("--town", action="store_true",
                   help="list every daemon attached to the town (any host), read from Redis: "
                        "host, pid, agents, last heartbeat (exit 0; 69 Redis unreachable)")
    p.set_defaults(handler="tinytownd.commands.daemon_cmds:cmd_status")

    p = sub.add_parser("reload", help="make the daemon re-read its config file",
                       epilog="exit codes: 0 applied, 1 could not apply everything, "
                              "69 daemon not running, 75 no answer in time, 77 permission denied, "
                              "78 invalid config (the daemon keeps the old one)")
    cli.add_config_arg(p)
    cli.add_json_arg(p)
    p.set_defaults(handler="tinytownd.commands.daemon_cmds:cmd_reload")

    p = sub.add_parser("stop", help="stop the daemon (graceful drain) and wait until it is gone",
                       epilog="exit codes: 0 stopped (or was not running), 75 timed out (or "
                              "no answer in time), 77 permission denied")
    cli.add_config_arg(p)
    p.add_argument("--timeout", type=float, metavar="S",
                   help="seconds to wait (default: daemon.drain_timeout_s + 30)")
    p.add_argument("--now", action="store_true", help="skip the drain")
    p.set_defaults(handler="tinytownd.commands.daemon_cmds:cmd_stop")

    p = sub.add_parser("check-config", help="validate the configuration file",
                       epilog="exit codes: 0 valid, 78 invalid (FILE: KEY: problem lines)")
    cli.add_config_arg(p)
    p.set_defaults(handler="tinytownd.commands.daemon_cmds:cmd_check_config")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load(args, *, check_files: bool = True):
    from tinytownd import config
    return config.load(args.config, check_files=check_files)


# ----------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from tinytownd import exitcodes
    from tinytownd.config import ConfigError
    from tinytownd.daemon.daemonize import notify_parent

    try:
        cfg = _load(args)
    except ConfigError as e:
        _err(str(e))
        notify_parent(exitcodes.CONFIG, str(e))
        return exitcodes.CONFIG
    from tinytownd.daemon.lifecycle import Daemon, StartError

    pidfile = getattr(args, "pidfile_obj", None) or args.pidfile
    try:
        d = Daemon(cfg, log_file_default=getattr(args, "log_file_default", None), pidfile=pidfile)
    except OSError as e:      # the log file cannot be opened
        msg = f"cannot open the log file: {e}"
        _err(f"tinytownd: {msg}")
        notify_parent(exitcodes.CANTCREAT, msg)
        return exitcodes.CANTCREAT
    try:
        d.start()
    except StartError as e:
        d.log.error("start failed", error=str(e), exit_code=e.exit_code)
        _err(f"tinytownd: {e}")
        notify_parent(e.exit_code, str(e).splitlines()[0])
        return e.exit_code
    except Exception as e:
        d.log.critical("start failed", exc_info=True)
        _err(f"tinytownd: internal error during start: {type(e).__name__}: {e}")
        notify_parent(exitcodes.SOFTWARE, str(e))
        return exitcodes.SOFTWARE
    notify_parent(0)
    return d.run()


# ----------------------------------------------------------------------------- client side
STATUS_TIMEOUT_S = 5.0     # the daemon answers status within ~0.5 s, whatever Redis does


def _ask(args, cmd: str, cargs: dict | None = None, timeout: float = 30.0):
    """(cfg, reply, problem): problem is None, or one of "config", "not-running", "noperm",
    "no-reply", "broken"; the message has been printed (except for "not-running")."""
    from tinytownd.config import ConfigError
    from tinytownd.daemon.control import (ControlError, NoReply, NotRunning, PermissionDenied,
                                          request)

    try:
        cfg = _load(args, check_files=False)
    except ConfigError as e:
        # The file may have been broken since the daemon started: find the control socket from
        # town/control/daemon alone, so `reload` reaches the daemon (which reports the problem) and
        # `status`/`stop` keep working.
        cfg = _lenient(args)
        if cfg is None:
            _err(str(e))
            return None, None, "config"
    from tinytownd.config import UNIX_PATH_MAX
    if len(str(cfg.control_socket_path)) > UNIX_PATH_MAX:
        _err(f"{cfg.path}: control.socket: path is over the {UNIX_PATH_MAX}-byte unix socket "
             f"limit: {cfg.control_socket_path}")
        return None, None, "config"
    try:
        return cfg, request(cfg.control_socket_path, cmd, cargs, timeout=timeout), None
    except NotRunning:
        return cfg, None, "not-running"
    except PermissionDenied as e:
        _err(f"tinytownd: {e}")
        return cfg, None, "noperm"
    except NoReply as e:
        _err(f"tinytownd: a daemon listens but did not answer: {e}")
        return cfg, None, "no-reply"
    except ControlError as e:
        _err(f"tinytownd: {e}")
        return cfg, None, "broken"


def _code(problem: str, *, no_reply: int, broken: int) -> int:
    from tinytownd import exitcodes
    return {"config": exitcodes.CONFIG, "noperm": exitcodes.NOPERM, "no-reply": no_reply,
            "broken": broken}[problem]


def _lenient(args):
    from tinytownd import config
    from tinytownd.config.yaml_file import read_yaml
    path = config.discover(args.config)
    try:
        data = read_yaml(path)
        part = {k: data[k] for k in ("town", "control", "daemon") if k in data}
        return config.from_dict(part, path, check_files=False)
    except Exception:
        return None


def _fmt_redis(r: dict) -> list[str]:
    where = r.get("socket") or r.get("url")
    head = f"redis: {r.get('mode')}" + (f" pid {r['pid']}" if r.get("pid") else "") + f", {where}"
    if r.get("reachable") is False:
        ago = r.get("last_ok_ago_s")
        since = f"; last answered {ago:.1f}s ago" if isinstance(ago, (int, float)) else ""
        return [f"{head}, UNREACHABLE ({r.get('error')}{since})",
                "  Redis is unreachable: figures read from Redis below are the last known ones"]
    return [f"{head}, {'ready' if r.get('ready') else 'NOT READY'}, version {r.get('version')}"]


def _fmt_status(st: dict) -> str:
    r = st.get("redis", {})
    lines = [
        f"tinytownd: {st.get('state', 'running')} (pid {st['pid']}), town {st['town']}, "
        f"up {st.get('uptime_s', 0):.1f}s",
        f"config: {st['config_path']} (reloads: {st['reloads']})",
        *_fmt_redis(r),
        "services:",
    ]
    for name, state in sorted(st.get("services", {}).items()):
        lines.append(f"  {name:<28} {state}")
    for name, comp in sorted((st.get("components") or {}).items()):
        note = ""
        if isinstance(comp, dict) and (comp.get("stale") or comp.get("redis_stale")):
            age = comp.get("age_s", comp.get("redis_age_s"))
            note = " (stale" + (f", {age:.1f}s old" if isinstance(age, (int, float)) else "") + ")"
        lines.append(f"{name}{note}: {json.dumps(comp, default=str)[:400]}")
    from .agent_cli_cmds import cli_state_line
    clis = ((st.get("components") or {}).get("runtime") or {}).get("clis") or {}
    lines += [ln for ln in map(cli_state_line, clis.values()) if ln]
    return "\n".join(lines)


def cmd_status(args) -> int:
    from tinytownd import exitcodes
    if getattr(args, "town", False):
        from .common import run
        from .town_status import cmd_town_status
        return run(lambda: cmd_town_status(args))
    cfg, reply, problem = _ask(args, "status", timeout=STATUS_TIMEOUT_S)
    if problem == "not-running":
        if args.json:
            print(json.dumps({"running": False, "control_socket": str(cfg.control_socket_path)}))
        else:
            print(f"tinytownd: not running (no daemon on {cfg.control_socket_path})")
        return exitcodes.NOT_RUNNING
    if problem is not None:
        if problem in ("no-reply", "broken") and args.json:
            print(json.dumps({"running": None, "answering": False,
                              "control_socket": str(cfg.control_socket_path)}))
        return _code(problem, no_reply=exitcodes.STATUS_UNKNOWN, broken=exitcodes.STATUS_UNKNOWN)
    if not reply.get("ok"):
        _err(f"tinytownd: status failed: {reply.get('error')}")
        return exitcodes.SOFTWARE
    reply.pop("ok", None)
    print(json.dumps(reply, default=str) if args.json else _fmt_status(reply))
    return exitcodes.OK


def cmd_reload(args) -> int:
    from tinytownd import exitcodes
    cfg, reply, problem = _ask(args, "reload", timeout=120.0)
    if problem == "not-running":
        _err(f"tinytownd: not running (no daemon on {cfg.control_socket_path})")
        return exitcodes.UNAVAILABLE
    if problem is not None:
        return _code(problem, no_reply=exitcodes.TEMPFAIL, broken=exitcodes.UNAVAILABLE)
    if args.json:
        print(json.dumps(reply, default=str))
    if not reply.get("ok"):
        _err(reply.get("error", "reload failed"))
        if reply.get("code") == "invalid_config":
            _err("tinytownd: reload refused; the daemon keeps running with its previous config")
            return exitcodes.CONFIG
        return exitcodes.FAILURE
    if not args.json:
        changes, restart = reply.get("changes", []), reply.get("restart_required", [])
        print(f"reloaded {reply.get('config_path', '')}".rstrip()
              + (": no changes" if not changes and not restart else ""))
        for line in changes:
            print(f"changed: {line}")
        for line in restart:
            print(f"needs a restart: {line}")
        for line in reply.get("notes", []):
            print(f"note: {line}")
    return exitcodes.OK


def _gone(pid: int) -> bool:
    from tinytownd.daemon.pidfile import pid_alive
    return not pid_alive(pid)


def cmd_stop(args) -> int:
    from tinytownd import exitcodes
    cfg, reply, problem = _ask(args, "stop", {"graceful": not args.now}, timeout=10.0)
    if problem == "not-running":
        print("tinytownd: not running")
        return exitcodes.OK
    if problem is not None:
        return _code(problem, no_reply=exitcodes.TEMPFAIL, broken=exitcodes.UNAVAILABLE)
    if not reply.get("ok"):
        _err(f"tinytownd: stop failed: {reply.get('error')}")
        return exitcodes.SOFTWARE
    pid = int(reply["pid"])
    timeout = args.timeout if args.timeout is not None else cfg.daemon.drain_timeout_s + 30
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            print(f"tinytownd: stopped (pid {pid})")
            return exitcodes.OK
        time.sleep(0.02)
    _err(f"tinytownd: pid {pid} still running after {timeout:g}s")
    return exitcodes.TEMPFAIL


def cmd_check_config(args) -> int:
    from tinytownd import exitcodes
    from tinytownd.config import ConfigError

    try:
        cfg = _load(args)
    except ConfigError as e:
        _err(str(e))
        return exitcodes.CONFIG
    if cfg.owned_redis:
        from tinytownd.daemon.redis_clients import MIN_VERSION
        from tinytownd.daemon.redis_server import RedisStartError, server_version
        try:
            version = server_version(cfg.redis.server)
        except RedisStartError as e:
            _err(f"{cfg.path}: redis.server: {e}")
            return exitcodes.CONFIG
        if tuple(int(x) for x in version.split(".")[:2]) < MIN_VERSION:
            _err(f"{cfg.path}: redis.server: {cfg.redis.server} is version {version}, "
                 f"below {MIN_VERSION[0]}.{MIN_VERSION[1]}")
            return exitcodes.CONFIG
    from tinytownd.config import redact_url as redact
    print(f"{cfg.path}: OK (town {cfg.town.name}, root {cfg.root}, redis "
          f"{'owned' if cfg.owned_redis else 'external'} {redact(cfg.redis_url())})")
    return exitcodes.OK
