"""The town runtime: the daemon component that runs the town's agents.

    town_runtime     TownRuntime (the component): agents, services, reload, drain, status
    agents_service   registration, heartbeats, (re)starting, adopting, waking parked agents
    backlog, retry_timer, recovery   backlog claims, due retries, agents of dead daemons
    worker, round    one agent's loop; one round (messages → CLI → ack / retry / fail)
    outcome          what a round's end means (pure)
    settings, prompt, cli_env        an agent's resolved settings, the prompt, the CLI's env
    runner, process, spawn, capture  running the CLI (posix_spawn off the loop), its output
    round_logs, lifeline             bounded round logs; CLIs never outlive the daemon
"""
