"""The prompt of one round: what the agent CLI reads on stdin and in $TINYTOWN_PROMPT_FILE.

Pure text: the agent and town, the task (its description and how to finish it), then the other
messages of the round, one line each.
"""
from __future__ import annotations

from tinytownd.store.records import message_text
from tinytownd.store.wire import SUPERVISOR_ID


def round_prompt(*, agent: str, role: str, town: str, task_id: str | None, task: dict | None,
                 task_msg: dict | None, others: list[dict], attempt: int,
                 max_attempts: int) -> str:
    lines = [f"# Tinytown agent {agent} (role {role}) in town {town}", ""]
    if task_msg is not None:
        if task_id:
            desc = (task or {}).get("description", "")
            lines += [f"## Task {task_id}", "", desc, ""]
            lines += [f"(attempt {attempt} of {max_attempts}. When you finish, exit 0: the "
                      "daemon completes the task with the end of your output. To record a "
                      "specific result or a failure yourself: `tinytownd task complete "
                      "$TINYTOWN_TASK_ID --result \"...\"` or `tinytownd task fail "
                      "$TINYTOWN_TASK_ID --result \"why\"`.)", ""]
        else:
            lines += ["## Task", "", task_msg.get("description", ""), ""]
    if others:
        lines += ["## Messages", ""]
        for m in others:
            sender = "supervisor" if m["from"] == SUPERVISOR_ID else m["from"]
            lines.append(f"- [{m['type']}] from {sender}: {message_text(m)}")
        lines.append("")
    return "\n".join(lines)
