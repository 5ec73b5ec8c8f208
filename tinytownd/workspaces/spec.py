"""An agent's workspace settings, resolved from its CLI's and its own `workspace:` keys (pure)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tinytownd.config import Config, WorkspaceSection


@dataclass(frozen=True)
class WorkspaceSettings:
    """What a worktree-mode agent's rounds use; paths absolute."""
    repo: str
    base: str
    branch: str
    dir: str
    commit: str
    keep: str
    setup: str | None


def merged(cli_ws: dict, agent_ws: dict) -> WorkspaceSection:
    """The CLI's keys, the agent entry's over them, the defaults for the rest."""
    return WorkspaceSection(**{**cli_ws, **agent_ws})


def resolve(cfg: Config, cli_ws: dict, agent_ws: dict, workdir: str) -> WorkspaceSettings | None:
    """None in shared mode (the default), else the settings with `repo` (default: `workdir`)
    and `dir` (relative = under the town root) made absolute."""
    ws = merged(cli_ws, agent_ws)
    if ws.mode != "worktree":
        return None
    fields = {f.name: getattr(ws, f.name) for f in dataclasses.fields(WorkspaceSettings)}
    fields["repo"] = str(cfg.resolve(ws.repo) or workdir)
    fields["dir"] = str(cfg.resolve(ws.dir))
    return WorkspaceSettings(**fields)
