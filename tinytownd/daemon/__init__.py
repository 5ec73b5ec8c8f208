"""The daemon process: lifecycle, the owned Redis, supervision, control socket, systemd.

    lifecycle        Daemon: start (socket, Redis, clients, components), run, drain, stop
    reload, status   reload (validate → diff → apply) and the status document
    supervisor       named services restarted with backoff; progress for the watchdog
    control, control_commands   the unix control socket and the commands it answers
    redis_server     the owned redis-server child (start, adopt, supervise, CONFIG SET, stop)
    redis_clients    the two Redis pools, reconnect policy, server checks
    component        the contract between the daemon and what it hosts (runtime, missions)
    sdnotify, pidfile, daemonize   systemd notify, pid files, `run --daemonize`
Nothing here imports gevent at package import: `--daemonize` must fork before gevent exists.
"""
