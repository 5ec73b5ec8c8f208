"""The environment an agent CLI runs with.

The daemon's own environment minus what belongs to the daemon (systemd's notify and socket
variables), plus the agent's `env`, plus the town's variables:

  TINYTOWN_AGENT_ID, TINYTOWN_AGENT_NAME, TINYTOWN_TOWN   who and where the agent is
  REDIS_URL                                             the town's Redis, for `tt` and tinytownd
  TINYTOWN_PROMPT_FILE                                  the round's prompt (also on stdin)
  TINYTOWN_USAGE_FILE                                   where the CLI may write its usage (JSON)
  TINYTOWND_CONFIG                                      the daemon's config file, for `tinytownd`
  TINYTOWN_TASK_ID                                      set per round by the shell line (runner)
  TINYTOWN_WORKSPACE, TINYTOWN_BRANCH, TINYTOWN_BASE    worktree mode: the task's worktree, its
                                                        branch and base commit (same way)

The directory of the running `tinytownd` goes first on PATH when it is not there, so a CLI can
call `tinytownd task complete` of the same installation.
"""
from __future__ import annotations

import os
import sys

DROPPED = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC",
           "WATCHDOG_PID", "TINYTOWN_TASK_ID", "TINYTOWN_PROMPT_FILE", "TINYTOWN_USAGE_FILE",
           "TINYTOWN_WORKSPACE", "TINYTOWN_BRANCH", "TINYTOWN_BASE")


def build(settings, *, town: str, redis_url: str, config_path: str | None,
          prompt_path: str, usage_path: str | None = None) -> dict:
    """A new environment dict for one agent's CLI."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(settings.env)
    env.update(TINYTOWN_AGENT_ID=settings.aid, TINYTOWN_AGENT_NAME=settings.name,
               TINYTOWN_TOWN=town, REDIS_URL=redis_url, TINYTOWN_PROMPT_FILE=prompt_path)
    if usage_path:
        env["TINYTOWN_USAGE_FILE"] = usage_path
    bindir = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(bindir, "tinytownd")) and \
            bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if config_path and not config_path.startswith("<"):
        env["TINYTOWND_CONFIG"] = os.path.abspath(config_path)
    return env


class CliEnvCache:
    """One environment dict per agent, rebuilt only when something it comes from changed.

    The *same dict* comes back round after round while os.environ, the agent's env, the prompt
    path, the config path and the Redis URL stay the same (a C-level dict compare per round): the
    spawner keeps the encoded form of a dict by its identity. Callers must not modify it.
    """

    def __init__(self, town: str, redis_url: str):
        self.town = town
        self.redis_url = redis_url
        self._by_agent: dict[str, tuple] = {}

    def get(self, settings, prompt_path: str, config_path: str | None,
            usage_path: str | None = None) -> dict:
        src = os.environ._data   # type: ignore[attr-defined]  (bytes → bytes, no decoding)
        sig = (settings.env, prompt_path, config_path, self.redis_url, settings.aid,
               settings.name, self.town, usage_path)
        c = self._by_agent.get(settings.aid)
        if c is None or c[0] != src or c[1] != sig:
            c = (dict(src), sig, build(settings, town=self.town, redis_url=self.redis_url,
                                       config_path=config_path, prompt_path=prompt_path,
                                       usage_path=usage_path))
            self._by_agent[settings.aid] = c
        return c[2]
