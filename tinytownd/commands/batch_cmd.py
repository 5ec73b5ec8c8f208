"""`tinytownd batch FILE`: run a pile of tasks to completion, unattended (see tinytownd.batch).

Only stdlib, tinytownd.cli and tinytownd.exitcodes at import time; the handler lazy-imports the
rest.
"""
from __future__ import annotations

import argparse
import types

from tinytownd import cli, exitcodes

EPILOG = """\
batch file (YAML):
  tasks:                      # or a mission file (objective + work_items)
    - id: t1
      description: "what the agent is told"
      role: worker            # optional; also: tags, timeout_s, max_attempts
  agent_clis: {demo: {command: "python3 examples/agents/demo-agent.py"}}
  agents: [{name: w, role: worker, cli: demo, count: 4}]
  workspace: {mode: worktree, repo: .}   # optional: each task in a git worktree and branch

Without -c the batch runs embedded: its own redis-server, agents and dispatcher in this process,
state under --dir (default .tinytownd/batches/<ID>). With -c it submits to that running daemon.

exit codes:
    0  every task completed
    1  some tasks failed (after their retries)
    2  usage error or invalid batch file (the offending entry is named)
   69  Redis unavailable
   75  interrupted (Ctrl-C / SIGTERM), --max-cost-usd reached, an agent CLI paused after a
       fatal error, or cooldowns longer than --max-wait: drained; continue with --resume ID
"""


def _usage_error(self, message):
    self.print_usage()
    self.exit(exitcodes.BATCH_USAGE, f"{self.prog}: error: {message}\n")


def register(sub) -> None:
    p = sub.add_parser("batch", help="run a batch of tasks to completion (headless)",
                       description="Run every task of FILE with many agents, unattended, and "
                                   "report a summary.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = types.MethodType(_usage_error, p)  # batch usage errors exit 2, not 64
    p.add_argument("file", metavar="FILE", help="batch file (YAML): tasks: list, or a mission")
    cli.add_config_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--id", dest="batch_id", metavar="ID",
                   help="name of the batch (default: generated and printed first)")
    g.add_argument("--resume", metavar="ID",
                   help="continue batch ID after a crash or interruption (nothing redone)")
    p.add_argument("--dir", metavar="DIR",
                   help="embedded run: Redis data, logs and state (default "
                        ".tinytownd/batches/<ID>)")
    p.add_argument("--agents", type=int, metavar="N",
                   help="number of agents (default 4, or the file's agents:)")
    p.add_argument("--cli", metavar="NAME",
                   help="agent CLI: a name from agent_clis, a built-in, or a command")
    p.add_argument("--summary", metavar="PATH", help="write the JSON summary to PATH")
    p.add_argument("--patches", metavar="DIR",
                   help="worktree mode: write <task id>.patch (git format-patch base..head) "
                        "for every task with changes into DIR")
    p.add_argument("--junit", metavar="PATH",
                   help="write a JUnit XML report to PATH (one testcase per task)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress output (default: bar on a terminal, JSON lines otherwise)")
    p.add_argument("--appendfsync", choices=("always", "everysec", "no", "off"),
                   help="embedded run: AOF policy of the batch's redis-server (default everysec; "
                        "off = no AOF)")
    p.add_argument("--max-cost-usd", type=float, metavar="USD",
                   help="cost budget: once the batch's tasks have cost this much (as the agent "
                        "CLIs report it), nothing new starts, running tasks finish, exit 75")
    p.add_argument("--max-wait", type=float, metavar="SECONDS",
                   help="the longest to wait while every agent CLI of the batch cools down after "
                        "rate limits (default: as long as it takes); then exit 75")
    p.set_defaults(handler="tinytownd.commands.batch_cmd:cmd_batch")


def cmd_batch(args) -> int:
    from tinytownd.batch.main import main

    return main(args)
