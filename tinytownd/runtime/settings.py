"""What the runtime knows about one agent it runs: its settings, resolved from the config.

`AgentSettings` is mutable on purpose: a reload updates it in place and the worker reads it every
round. `resolve` is the one place where an agent entry and its CLI become settings (pure).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tinytownd.config import AgentCli, AgentSpec, Config
from tinytownd.workspaces import spec as workspace_spec

# fields a reload may change in place (the next round uses them)
LIVE_FIELDS = ("role", "cli", "command", "timeout_s", "max_attempts", "workdir", "env", "tags",
               "workspace", "agent_cli")


@dataclass
class AgentSettings:
    name: str
    aid: str
    role: str
    cli: str
    command: str
    timeout_s: float | None
    max_attempts: int
    workdir: str
    env: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    adopted: bool = False        # an agent tt registered that this daemon runs (`adopt: true`)
    agent_cli: AgentCli = field(default_factory=AgentCli)   # prompt, output, failure classes
    workspace: object = None     # workspaces.spec.WorkspaceSettings; None = shared mode

    def update_from(self, new: "AgentSettings") -> list[str]:
        """Take the live fields of `new`; return the names of those that changed."""
        changed = [f for f in LIVE_FIELDS if getattr(self, f) != getattr(new, f)]
        for f in changed:
            setattr(self, f, getattr(new, f))
        self.adopted = False
        return changed


def resolve(cfg: Config, a: AgentSpec, aid: str, *, adopted: bool = False) -> AgentSettings | None:
    """The settings of agent entry `a` (None when its CLI is not defined)."""
    cli = cfg.clis().get(a.cli)
    if cli is None:
        return None
    workdir = cfg.resolve(a.workdir or cli.workdir) or cfg.root
    env = {str(k): str(v) for k, v in {**cli.env, **a.env}.items()}
    ws = workspace_spec.resolve(cfg, cli.workspace, a.workspace, str(workdir)) \
        if cli.workspace or a.workspace else None
    return AgentSettings(name=a.name, aid=aid, role=a.role or "worker", cli=a.cli,
                         command=cli.command, timeout_s=cli.timeout_s,
                         max_attempts=cli.max_attempts, workdir=str(workdir), env=env,
                         tags=[str(t) for t in a.tags], adopted=adopted, workspace=ws,
                         agent_cli=cli)
