"""The command-line parser. argparse only: importing this must not import gevent, redis or
structlog, because `tinytownd run --daemonize` detaches before gevent is loaded.

Each area registers its subcommands from `tinytownd/commands/<area>.py` (`register(sub)`), and names
its handler as a "module:function" string that `__main__` imports after monkey-patching.
"""
from __future__ import annotations

import argparse
import importlib

from . import __version__, exitcodes

AREAS = ("daemon_cmds", "town_cmds", "mission_cmds", "batch_cmd", "workspace_cmds",
         "agent_cli_cmds")


class Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (EX_USAGE), not argparse's 2."""

    def error(self, message):  # noqa: D401
        self.print_usage()
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="config file (default: $TINYTOWND_CONFIG, else "
                        "/etc/tinytownd/tinytownd.yaml)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> Parser:
    parser = Parser(
        prog="tinytownd",
        description="A supervised runtime for Tinytown towns: agents, tasks and missions in Redis.",
        epilog=exitcodes.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinytownd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for area in AREAS:
        importlib.import_module(f"tinytownd.commands.{area}").register(sub)
    return parser
