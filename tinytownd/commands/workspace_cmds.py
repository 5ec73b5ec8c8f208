"""`tinytownd workspaces [list|prune] [--json]`: the town's task worktrees (workspaces/listing.py)."""
from __future__ import annotations

from tinytownd import cli

from . import common
from .town_cmds import _common

H = "tinytownd.commands.workspace_cmds:"


def register(sub) -> None:
    p = sub.add_parser("workspaces", help="list or prune the tasks' git worktrees",
                       description="list or prune the tasks' git worktrees (worktree mode)")
    cli.add_config_arg(p)
    cli.add_json_arg(p)
    p.set_defaults(handler=H + "cmd_workspaces", action="list", all=False)
    wsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=cli.Parser)
    _common(wsub.add_parser("list", help="what exists, for which task, its state and disk use"))
    pr = wsub.add_parser("prune", help="`git worktree prune`, then remove what the keep policy "
                                       "allows for tasks that have ended")
    _common(pr)
    pr.add_argument("--all", action="store_true",
                    help="also remove worktrees the policy keeps (branches with commits stay)")


def cmd_workspaces(args) -> int:
    def go():
        from tinytownd.workspaces import listing
        from tinytownd.workspaces.manager import WorkspaceManager

        town, cfg = common.open_town(args)
        dirs = listing.dirs_of(cfg) if cfg is not None else set()
        mgr = WorkspaceManager(town.r, town.keys, log=_StderrLog(), dirs=lambda: dirs)
        if (args.action or "list") == "prune":
            repos = listing.repos_of(cfg) if cfg is not None else set()
            done = mgr.sweep(repos, kept=args.all)
            left = listing.rows(mgr, sizes=False)
            common.output(args, {"pruned": done, "repos": sorted(repos), "left": left},
                          f"pruned {len(done)} workspace(s); {len(left)} left")
            return 0
        rows = listing.rows(mgr)
        table = [[r["task"][:8], r["task_state"], r["state"], r["branch"] or "-",
                  _stat(r), listing.human_size(r["bytes"]), r["path"] or "-"] for r in rows]
        common.output(args, rows, common.table(table, ["TASK", "TASK STATE", "STATE", "BRANCH",
                                                       "CHANGES", "DISK", "PATH"]))
        return 0
    return common.run(go)


def _stat(r: dict) -> str:
    if not r.get("files_changed"):
        return "-"
    return f"{r['files_changed']}f +{r.get('insertions') or 0} -{r.get('deletions') or 0}"


class _StderrLog:
    """The manager's log for a command: stdout is for the output; warnings go to stderr."""

    def info(self, event, **kw) -> None:
        pass

    def warning(self, event, **kw) -> None:
        common.say_error("tinytownd workspaces", " ".join([event, *(f"{k}={v}"
                                                                   for k, v in kw.items())]))
