"""What an agent CLI entry says beyond its command: how the prompt goes in, what format its output
has, and which output means a rate limit or a fatal error; plus the sources of the built-in
presets (schema.BUILTIN_CLIS) as README's table shows them.

Pure data and one rule: a command with a placeholder implies its prompt mode
(`{prompt_file}` → file, `{prompt}` → arg).
"""
from __future__ import annotations

PROMPT_MODES = ("stdin", "file", "arg")
OUTPUT_FORMATS = ("text", "claude-json", "codex-jsonl")
PLACEHOLDERS = {"{prompt_file}": "file", "{prompt}": "arg"}

# Matched case-insensitively against the output of a *failed* round (never a successful one).
# Narrow on purpose: a bare "429" or "rate limit" in a failing test's output must not make a
# task wait for ever without using attempts.
PRESET_RATE_LIMIT_PATTERNS = [
    r"(?:status|error|code|http)\W{0,3}429\b",
    r"too many requests",
    r"rate[ _-]?limit(?:ed|_error|[ _-]exceeded|[ _-]reached)",
    r"overloaded",
    r"usage limit",
    r"quota exceeded|resource_exhausted",
]
PRESET_FATAL_PATTERNS = [
    r"invalid[ _-]?(?:x-)?api[ _-]?key",
    r"incorrect api key",
    r"authentication[ _-]?(?:failed|error)|failed to authenticate",
    r"unknown model|model[ _-]not[ _-]found|invalid model",
    r"not logged in|please run /login",
]


def implied_prompt_mode(command: str) -> str | None:
    """The prompt mode a command's placeholder implies (None: no placeholder); ValueError when it
    has both."""
    found = {mode for ph, mode in PLACEHOLDERS.items() if ph in command}
    if len(found) > 1:
        raise ValueError("uses both {prompt} and {prompt_file}; use one")
    return found.pop() if found else None


# name → (verified flags with their source, flags or behaviour not confirmed by a source read)
PRESET_SOURCES: dict[str, tuple[str, str]] = {
    "claude": ("`-p`/`--print`, `--output-format json` (one result object: `result`, `is_error`, "
               "`total_cost_usd`, `usage`, `num_turns`, `session_id`), prompt on stdin "
               "(`echo … | claude -p`): docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless, "
               "Agent SDK cost tracking (platform.claude.com/docs/en/agent-sdk/cost-tracking)",
               "`--dangerously-skip-permissions` (not in the pages read)"),
    "codex": ("`codex exec`, `--json` (JSONL: `thread.started`, `turn.completed` with `usage`, "
              "`turn.failed`, `item.completed` with `agent_message`, `error`), `--sandbox "
              "danger-full-access`, prompt `-` on stdin: developers.openai.com/codex/noninteractive,"
              " openai/codex codex-rs/exec/src/exec_events.rs", ""),
    "aider": ("`--message-file FILE`, `--yes`, `--no-auto-commits`: aider.chat/docs/scripting.html",
              ""),
    "gemini": ("`-p`/`--prompt` (headless): geminicli.com/docs/cli/headless",
               "`--yolo` (auto-approve; only secondary sources, deprecated for "
               "`--approval-mode=yolo`); its `--output-format json` is not parsed (output: text)"),
    "auggie": ("", "`auggie --print` with the prompt on stdin (no source read)"),
    "copilot": ("", "`copilot -p PROMPT --allow-all-tools` (secondary sources only)"),
    "cursor": ("", "`cursor-agent -p PROMPT` (no source read)"),
}
