"""The YAML configuration of a daemon (pure: no Redis, no gevent).

    checks   value checks of single fields, ConfigError, redact_url
    schema   the sections as frozen dataclasses (default, check, doc, live/restart per field)
    load     YAML → Config with every problem as `FILE: KEY: problem`; env overrides
    diff     what changed between two configs, live or restart-only

This file is the package's face: callers use `config.load`, `config.Config`, … from here.
"""
from .checks import ConfigError, is_loopback, redact_url
from .diff import Change, diff, keep_old
from .load import discover, from_dict, load
from .schema import (BUILTIN_CLIS, DEFAULT_PATH, ENV_CONFIG, UNIX_PATH_MAX, AgentCli, AgentSpec,
                     Config, ControlSection, DaemonSection, LoggingSection, MissionsSection,
                     RedisSection, RuntimeSection, TlsSection, TownSection, WorkspaceSection)

__all__ = ["ConfigError", "is_loopback", "redact_url", "Change", "diff", "keep_old", "discover",
           "from_dict", "load", "BUILTIN_CLIS", "DEFAULT_PATH", "ENV_CONFIG", "UNIX_PATH_MAX",
           "AgentCli", "AgentSpec", "Config", "ControlSection", "DaemonSection", "LoggingSection",
           "MissionsSection", "RedisSection", "RuntimeSection", "TlsSection", "TownSection",
           "WorkspaceSection"]
