"""Agent CLIs of a town: `tinytownd resume-cli NAME` (end a fatal pause or a cooldown), and the
views of CLI state and usage that `agents`, `status` and `task show` print."""
from __future__ import annotations

from tinytownd import cli

from . import common

H = "tinytownd.commands.agent_cli_cmds:"


def register(sub) -> None:
    p = sub.add_parser("resume-cli", help="end an agent CLI's town-wide pause (after a fatal "
                                          "error) or cooldown (after a rate limit)",
                       description="Let every agent of CLI NAME take work again, on every "
                                   "daemon of the town.")
    cli.add_config_arg(p)
    cli.add_json_arg(p)
    p.add_argument("name", metavar="NAME", help="the agent CLI (a key of agent_clis)")
    p.set_defaults(handler=H + "cmd_resume_cli")


def cmd_resume_cli(args) -> int:
    def go():
        from tinytownd.store.cli_state import CliState

        town, cfg = common.open_town(args)
        known = set(cfg.clis()) if cfg is not None else set()
        if args.name not in known and not town.r.exists(town.keys.cli(args.name)):
            raise LookupError(f"unknown agent CLI {args.name!r}: not in agent_clis or the "
                              f"built-in presets ({', '.join(sorted(known)) or 'no config'}), "
                              "and no state of it in the town")
        was = CliState(town.r, town.keys).resume(args.name)
        what = []
        if was.get("paused"):
            what.append(f"paused: {was.get('paused_reason')}")
        if was.get("cooldown_until"):
            what.append(f"cooling down until {was['cooldown_until']}")
        common.output(args, {"cli": args.name, "was": was, "resumed": bool(what)},
                      f"{args.name}: resumed (was {'; '.join(what)})" if what else
                      f"{args.name}: neither paused nor cooling down")
        return 0
    return common.run(go)


def cli_state_line(st: dict) -> str | None:
    """One line for a CLI's pause or cooldown (None when neither is in force)."""
    name = st.get("cli")
    if st.get("paused"):
        return (f"CLI {name}: PAUSED ({st.get('paused_reason')}); "
                f"tinytownd resume-cli {name}")
    if st.get("cooldown_until"):
        return (f"CLI {name}: cooling down until {st['cooldown_until']} "
                f"({st.get('cooldown_left_s')}s left): {st.get('cooldown_reason')}")
    return None


def usage_text(u: dict) -> str:
    """`$0.0123, 1200 in / 340 out / 800 cached tokens, 3 turns` (empty when nothing)."""
    if not u:
        return ""
    parts = []
    if "cost_usd" in u:
        parts.append(f"${float(u['cost_usd']):.4f}")
    tok = [f"{int(u[k])} {w}" for k, w in (("input_tokens", "in"), ("output_tokens", "out"),
                                           ("cached_tokens", "cached")) if u.get(k)]
    if tok:
        parts.append(" / ".join(tok) + " tokens")
    if u.get("turns"):
        parts.append(f"{int(u['turns'])} turns")
    return ", ".join(parts)
