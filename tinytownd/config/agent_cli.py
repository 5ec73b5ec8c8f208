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


# name → (the flags the preset relies on, confirmed in the tool's own documentation, with where;
# what could not be confirmed there: the README table marks that preset "unverified").
PRESET_SOURCES: dict[str, tuple[str, str]] = {
    "claude": ("`-p` (print, headless), prompt on stdin, `--output-format json` (one result "
               "object: `result`, `is_error`, `total_cost_usd`, `usage`, `num_turns`, "
               "`session_id`): docs.anthropic.com/en/docs/claude-code/sdk/sdk-headless, "
               "docs.anthropic.com/en/docs/claude-code/cli-reference",
               "`--dangerously-skip-permissions` is in the CLI reference, not in the pages read"),
    "codex": ("`codex exec`, `--json` (JSONL events `thread.started`, `turn.completed` with "
              "`usage`, `turn.failed`, `item.completed` with `agent_message`, `error`), "
              "`--sandbox danger-full-access`, `--skip-git-repo-check`, prompt `-` = stdin: "
              "developers.openai.com/codex/noninteractive, openai/codex docs/exec.md and "
              "codex-rs/exec/src/exec_events.rs", ""),
    "aider": ("`--message-file FILE` (one message, then exit), `--yes`, `--no-auto-commits`: "
              "aider.chat/docs/scripting.html", ""),
    "gemini": ("`-p`/`--prompt PROMPT` (headless): geminicli.com/docs/cli/headless",
               "`--yolo` (auto-approve) only from `gemini --help` output quoted elsewhere; its "
               "`--output-format json` (`response`, `stats`) is not parsed: output text"),
    "auggie": ("", "`auggie --print` with the prompt on stdin: no page of "
                   "docs.augmentcode.com read documents it"),
    "copilot": ("prompt piped on stdin, `-s` (only the agent's answer), `--allow-all-tools`, "
                "`--no-ask-user`: docs.github.com/en/copilot/how-tos/copilot-cli/"
                "automate-copilot-cli/run-cli-programmatically and .../cli-programmatic-reference",
                ""),
    "cursor": ("", "`cursor-agent -p PROMPT`: only third-party wrappers document it"),
}
