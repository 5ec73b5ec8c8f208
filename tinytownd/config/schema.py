"""The config schema: one frozen dataclass per section; each field carries its default, its
check, its documentation and whether a reload applies it live. `etc/tinytownd.yaml` documents every
default listed here; `Config` also derives the paths and sizes the daemon uses."""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from .agent_cli import (OUTPUT_FORMATS, PRESET_FATAL_PATTERNS, PRESET_RATE_LIMIT_PATTERNS,
                        PROMPT_MODES)
from .checks import (MAX_AGENT_COUNT, MAX_COMMAND, MAX_COOLDOWN_S, MAX_NAME, base_ref,
                     branch_pattern, cli_ref, cli_timeout, env_map, one_of, log_level, in_range,
                     nonempty, pattern_list, redis_url_value,
                     role_name, save_rules, byte_size, tag_list, town_name, opt, redact_url)

DEFAULT_PATH = "/etc/tinytownd/tinytownd.yaml"
ENV_CONFIG = "TINYTOWND_CONFIG"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
BLOCK_HEADROOM = 16  # blocking connections beyond one per agent
# ----------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class TownSection:
    name: str = opt("tinytown", live=False, check=town_name,
                    doc="town name; keys are tt:<name>:…")
    root: str | None = opt(None, live=False,
                           doc="holds sockets, data, logs; null = $STATE_DIRECTORY, else the "
                               "config file's directory. Relative paths resolve against it.")


@dataclass(frozen=True)
class TlsSection:
    enabled: bool = opt(False, live=False)
    cert: str | None = opt(None, live=False)
    key: str | None = opt(None, live=False)
    ca_cert: str | None = opt(None, live=False)
    auth_clients: bool = opt(False, live=False, doc="require client certificates")


@dataclass(frozen=True)
class RedisSection:
    url: str | None = opt(None, live=False, check=redis_url_value)
    socket: str | None = opt("redis.sock", live=False)
    bind: str = opt("127.0.0.1", live=False)
    port: int = opt(0, live=False, check=in_range(0, 65535))
    password: str | None = opt(None, live=False)
    tls: TlsSection = opt(factory=TlsSection, live=False)
    save: str = opt("3600 1 300 100 60 10000", check=save_rules)
    appendonly: bool = opt(True)
    appendfsync: str = opt("everysec", check=one_of("always", "everysec", "no"))
    maxmemory: int = opt(0, check=byte_size)
    maxmemory_policy: str = opt("noeviction", check=one_of(
        "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
        "volatile-lfu", "volatile-random", "volatile-ttl"))
    server: str = opt("redis-server", live=False)
    data_dir: str = opt("redis", live=False, doc="dir for RDB/AOF/log (under the town root)")
    pool_size: int = opt(64, live=False, check=in_range(4, 1024),
                         doc="connections for ordinary commands")
    start_timeout_s: float = opt(10.0, check=in_range(0.5, 600))
    restart_backoff_max_s: float = opt(10.0, check=in_range(0.1, 600))


@dataclass(frozen=True)
class ControlSection:
    socket: str = opt("tinytownd.sock", live=False)


@dataclass(frozen=True)
class LoggingSection:
    level: str = opt("info", check=log_level)
    file: str | None = opt(None)


@dataclass(frozen=True)
class DaemonSection:
    drain_timeout_s: float = opt(30.0, check=in_range(0, 86400),
                                 doc="SIGTERM/stop: time for running rounds to finish")
    pidfile: str | None = opt(None, live=False, doc="used by --daemonize when --pidfile is absent")
    watchdog_stall_s: float = opt(30.0, check=in_range(1, 3600),
                                  doc="WATCHDOG=1 stops when a service made no progress for this")


@dataclass(frozen=True)
class RuntimeSection:
    heartbeat_interval_s: float = opt(5.0, check=in_range(0.1, 10))
    block_timeout_s: float = opt(1.0, check=in_range(0.05, 30),
                                 doc="server-side BLMOVE timeout of an idle agent")
    lease_ttl_s: float = opt(30.0, check=in_range(1, 3600))
    stale_after_s: float = opt(60.0, check=in_range(1, 86400),
                               doc="sweeper: heartbeat and lease older than this = dead agent")
    sweep_interval_s: float = opt(10.0, check=in_range(0.1, 3600))
    idle_timeout_s: float = opt(0.0, check=in_range(0, 86400),
                                doc="0 = never; 300 = Tinytown's scale-to-zero")
    retry_backoff_s: float = opt(1.0, check=in_range(0, 3600))
    retry_backoff_max_s: float = opt(300.0, check=in_range(0, 86400))
    result_tail_bytes: int = opt(4000, check=in_range(0, 1 << 20))
    max_blocking_connections: int = opt(0, check=in_range(0, 4096),
                                        doc="0 = one per agent plus headroom")
    backlog_claim: bool = opt(True, doc="idle agents claim backlog tasks that fit their role/tags")
    task_events: str = opt("none", check=one_of("lifecycle", "terminal", "none"),
                           doc="the per-task events tt itself never writes, on the town, agent "
                               "and mission streams: lifecycle = task_assigned, agent "
                               "Working/Idle per round, task_completed, task_failed; terminal = "
                               "task_completed and task_failed only; none = none of them (each "
                               "costs an XADD per stream per task)")
    round_log_max_bytes: int = opt(1 << 20, check=in_range(4096, 1 << 30),
                                   doc="one round's log: its first quarter and last three "
                                       "quarters are kept, the middle dropped and counted")
    round_logs_kept: int = opt(50, check=in_range(1, 10000), doc="round logs kept per agent")
    round_logs_max_bytes: int = opt(64 << 20, check=in_range(1 << 20, 1 << 40),
                                    doc="all round logs of one agent together")


@dataclass(frozen=True)
class WorkspaceSection:
    """`workspace:` of an agent CLI or an agent entry (the entry's keys win); README "Agent
    workspaces"."""
    mode: str = opt("shared", check=one_of("shared", "worktree"),
                    doc="shared: every task runs in the agent's workdir; worktree: each task in "
                        "a git worktree and branch of its own")
    repo: str | None = opt(None, doc="a git repository; null = the agent's workdir")
    base: str = opt("HEAD", check=base_ref,
                    doc="ref the task's branch starts from, resolved once per task")
    branch: str = opt("tt/{task_short}-{slug}", check=branch_pattern,
                      doc="the branch name; placeholders {town} {task} {task_short} {slug} "
                          "{agent} {batch} {item}")
    dir: str = opt("workspaces", check=nonempty,
                   doc="where worktrees live (relative = under town.root)")
    commit: str = opt("auto", check=one_of("auto", "agent"),
                      doc="auto: after exit 0, commit what the agent left uncommitted; agent: "
                          "leave the tree as the agent left it")
    keep: str = opt("on_failure", check=one_of("never", "on_failure", "always"),
                    doc="the worktree directory after the task ends (a branch with commits "
                        "always stays)")
    setup: str | None = opt(None, max_len=MAX_COMMAND,
                            doc="command run once in a new worktree before the first round")


@dataclass(frozen=True)
class AgentCli:
    command: str = opt("", check=None, max_len=MAX_COMMAND)
    timeout_s: float | None = opt(3600.0, check=cli_timeout, doc="per round; null = no limit")
    max_attempts: int = opt(3, check=in_range(1, 1000))
    env: dict = opt(factory=dict, check=env_map)
    workdir: str | None = opt(None)
    prompt: str = opt("stdin", check=one_of(*PROMPT_MODES),
                      doc="how the prompt goes in; a {prompt_file}/{prompt} placeholder implies it")
    output: str = opt("text", check=one_of(*OUTPUT_FORMATS),
                      doc="text (the output's tail) | claude-json | codex-jsonl")
    rate_limit_patterns: list = opt(factory=list, check=pattern_list,
                                    doc="regexes on a failed round's output: rate_limited")
    fatal_patterns: list = opt(factory=list, check=pattern_list,
                               doc="regexes on a failed round's output: fatal (CLI paused)")
    cooldown_s: float = opt(30.0, check=in_range(1, MAX_COOLDOWN_S),
                            doc="first cooldown after a rate limit (then doubling)")
    cooldown_max_s: float = opt(900.0, check=in_range(1, MAX_COOLDOWN_S))
    inactivity_timeout_s: float | None = opt(None, check=cli_timeout,
                                             doc="end a round whose output stopped growing")
    workspace: dict = opt(factory=dict, doc="WorkspaceSection keys given (an agent's win)")


@dataclass(frozen=True)
class AgentSpec:
    name: str = opt("", max_len=MAX_NAME)
    role: str = opt("worker", check=role_name)
    cli: str = opt("", check=cli_ref)
    count: int = opt(1, check=in_range(1, MAX_AGENT_COUNT))
    workdir: str | None = opt(None)
    env: dict = opt(factory=dict, check=env_map)
    tags: list = opt(factory=list, check=tag_list,
                     doc="backlog tags this agent claims (besides its role)")
    workspace: dict = opt(factory=dict, doc="WorkspaceSection keys given (win over the CLI's)")


@dataclass(frozen=True)
class MissionsSection:
    enabled: bool = opt(True, live=False)
    lease_ttl_s: float = opt(90.0, check=in_range(3, 3600))
    sweep_interval_s: float = opt(30.0, check=in_range(0.1, 3600),
                                  doc="safety sweep; task completions wake missions at once")
    gh: str = opt("gh")
    gh_timeout_s: float = opt(30.0, check=in_range(1, 600))
    conductor_help_backoff_s: float = opt(900.0, check=in_range(1, 86400))


@dataclass(frozen=True)
class Config:
    town: TownSection = opt(factory=TownSection)
    redis: RedisSection = opt(factory=RedisSection)
    control: ControlSection = opt(factory=ControlSection)
    logging: LoggingSection = opt(factory=LoggingSection)
    daemon: DaemonSection = opt(factory=DaemonSection)
    runtime: RuntimeSection = opt(factory=RuntimeSection)
    agent_clis: dict = opt(factory=dict, doc="NAME → AgentCli; merged over BUILTIN_CLIS")
    agents: list = opt(factory=list, doc="list of AgentSpec")
    adopt: bool = opt(False, doc="also run agents tt registered that nobody runs")
    missions: MissionsSection = opt(factory=MissionsSection)
    # Not from the file's keys (compare=False): where it came from, what the environment
    # overrode, and what the file said about agents (a reload checks these).
    path: str = field(default="<defaults>", compare=False)
    env_redis_url: bool = field(default=False, compare=False)
    source_empty: bool = field(default=False, compare=False)   # the document was empty
    agents_listed: bool = field(default=False, compare=False)  # the file has an `agents:` list

    # --- derived values -------------------------------------------------------------
    @functools.cached_property   # (a frozen config: computed once; agents ask every round)
    def root(self) -> Path:
        return Path(self.town.root)  # always absolute after load()

    def resolve(self, p: str | None) -> Path | None:
        """A path from the file: absolute as is, relative against the town root."""
        if p is None:
            return None
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else self.root / q

    @property
    def owned_redis(self) -> bool:
        return self.redis.url is None

    @property
    def redis_data_dir(self) -> Path:
        return self.resolve(self.redis.data_dir)

    @property
    def redis_socket_path(self) -> Path | None:
        return self.resolve(self.redis.socket) if self.redis.socket else None

    @property
    def control_socket_path(self) -> Path:
        return self.resolve(self.control.socket)

    @property
    def log_file_path(self) -> Path | None:
        return self.resolve(self.logging.file)

    @functools.cached_property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @functools.cached_property
    def logs_dir_str(self) -> str:
        return str(self.logs_dir)

    def redis_url(self, *, redacted: bool = False) -> str:
        """The URL clients use: external URL, or the owned child's socket / TCP address."""
        r = self.redis
        if r.url:
            return redact_url(r.url) if redacted else r.url
        pw = r.password
        if self.redis_socket_path:
            q = f"?password={'****' if redacted else pw}" if pw else ""
            return f"unix://{self.redis_socket_path}{q}"
        auth = f":{'****' if redacted else pw}@" if pw else ""
        scheme = "rediss" if r.tls.enabled else "redis"
        host = r.bind if r.bind not in ("0.0.0.0", "::", "*") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{auth}{host}:{r.port}"

    def clis(self) -> dict[str, AgentCli]:
        return {**BUILTIN_CLIS, **self.agent_clis}

    @property
    def blocking_connections(self) -> int:
        """Size of the blocking-pop pool: runtime.max_blocking_connections, else one per agent
        plus headroom (more when `adopt` may bring in agents tt registered)."""
        n = self.runtime.max_blocking_connections
        if n:
            return n
        return len(self.expanded_agents()) + BLOCK_HEADROOM + (32 if self.adopt else 0)

    def expanded_agents(self) -> list[AgentSpec]:
        """`count: N` turns NAME into NAME-1 … NAME-N."""
        out = []
        for spec in self.agents:
            if spec.count == 1:
                out.append(spec)
            else:
                out.extend(dataclasses.replace(spec, name=f"{spec.name}-{i}", count=1)
                           for i in range(1, spec.count + 1))
        return out


def _preset(command: str, *, prompt: str = "stdin", output: str = "text") -> AgentCli:
    return AgentCli(command=command, prompt=prompt, output=output,
                    rate_limit_patterns=list(PRESET_RATE_LIMIT_PATTERNS),
                    fatal_patterns=list(PRESET_FATAL_PATTERNS))


# Each preset's flags and their sources: config/agent_cli.py PRESET_SOURCES (README table).
BUILTIN_CLIS: dict[str, AgentCli] = {
    "claude": _preset("claude -p --output-format json --dangerously-skip-permissions",
                      output="claude-json"),
    "codex": _preset("codex exec --json --sandbox danger-full-access --skip-git-repo-check -",
                     output="codex-jsonl"),
    "auggie": _preset("auggie --print"),
    "aider": _preset("aider --yes --no-auto-commits --message-file {prompt_file}", prompt="file"),
    "gemini": _preset("gemini --yolo -p {prompt}", prompt="arg"),
    "copilot": _preset("copilot -s --allow-all-tools --no-ask-user"),
    "cursor": _preset("cursor-agent -p {prompt}", prompt="arg"),
}

_SECTION_OF_DICT = {"agent_clis": AgentCli}
_SECTION_OF_LIST = {"agents": AgentSpec}
