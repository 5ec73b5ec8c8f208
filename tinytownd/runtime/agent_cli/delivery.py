"""How the prompt reaches an agent CLI (`agent_clis.*.prompt`), decided once per round (pure).

  stdin  the prompt is written to the CLI's stdin (today's way)
  file   stdin is empty; `{prompt_file}` in the command becomes the prompt file's path
         (shell-quoted), or the path is appended as the last argument
  arg    stdin is empty; `{prompt}` becomes the prompt, shell-quoted, or it is appended

In every mode $TINYTOWN_PROMPT_FILE names the same file. The command runs under `sh -c` as one
argument, and Linux limits one argument to MAX_ARG_STRLEN bytes: an arg-mode command that would
be longer cannot run, and says so.
"""
from __future__ import annotations

import shlex

MAX_ARG_BYTES = 131072 - 4096   # MAX_ARG_STRLEN, less the `cd` and `export` lines before it


class PromptTooLong(Exception):
    """The prompt does not fit the command line of `prompt: arg`."""


def prepare(mode: str, command: str, prompt: str, prompt_path: str) -> tuple[str, str]:
    """(the command to run, what goes on its stdin)."""
    if mode == "stdin":
        return command, prompt
    if mode == "file":
        path = shlex.quote(prompt_path)
        if "{prompt_file}" in command:
            return command.replace("{prompt_file}", path), ""
        return f"{command} {path}", ""
    quoted = shlex.quote(prompt)
    cmd = command.replace("{prompt}", quoted) if "{prompt}" in command else f"{command} {quoted}"
    size = len(cmd.encode("utf-8", "surrogateescape"))
    if size > MAX_ARG_BYTES:
        raise PromptTooLong(f"the prompt makes the command {size} bytes long, over the "
                            f"{MAX_ARG_BYTES} bytes one argument may have (prompt: arg); use "
                            "prompt: file or stdin for this CLI")
    return cmd, ""
