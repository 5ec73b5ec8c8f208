#!/usr/bin/env python3
"""A demo agent CLI for tinytownd: no network, no API key.

tinytownd runs it once per round (`sh -c "python3 examples/agents/demo-agent.py"`), with the
prompt on stdin and in $TINYTOWN_PROMPT_FILE, and $TINYTOWN_TASK_ID / $TINYTOWN_AGENT_NAME set.
It "works" for a short while, then prints a result; its exit code decides the task:
0 = completed (the output tail becomes the task result), non-zero = retried, then failed.

Knobs (environment, e.g. from agent_clis.<name>.env): DEMO_MIN_S / DEMO_MAX_S (work time,
default 0.2–1.0 s). A task description containing "[fail]" always fails, "[flaky]" fails on its
first attempt (remembered in $TMPDIR), to show retries.

In worktree mode ($TINYTOWN_WORKSPACE set, cwd = the task's own git worktree) it edits files
like a coding agent would: appends a line to CHANGELOG.md (every task edits the same file, each
on its own branch) and writes notes/<task>.md. A "[flaky]" task writes its draft on the first
attempt and finds it again on the retry, which continues in the same worktree. tinytownd
commits what it leaves (commit: auto).
"""
import hashlib
import os
import random
import sys
import tempfile
import time


def main() -> int:
    prompt = ""
    pf = os.environ.get("TINYTOWN_PROMPT_FILE")
    if pf and os.path.exists(pf):
        with open(pf, encoding="utf-8", errors="replace") as f:
            prompt = f.read()
    elif not sys.stdin.isatty():
        prompt = sys.stdin.read()
    task = os.environ.get("TINYTOWN_TASK_ID", "-")
    agent = os.environ.get("TINYTOWN_AGENT_NAME", "agent")
    lo = float(os.environ.get("DEMO_MIN_S", "0.2"))
    hi = float(os.environ.get("DEMO_MAX_S", "1.0"))
    time.sleep(random.uniform(lo, max(lo, hi)))
    words = len(prompt.split())
    digest = hashlib.sha1(prompt.encode()).hexdigest()[:8]
    if "[fail]" in prompt:
        print(f"{agent}: cannot do task {task} (asked to fail)", file=sys.stderr)
        return 3
    if os.environ.get("TINYTOWN_WORKSPACE"):
        return edit_files(prompt, task, agent, words, digest)
    if "[flaky]" in prompt:
        mark = os.path.join(tempfile.gettempdir(), f"demo-agent-flaky-{task}")
        if not os.path.exists(mark):
            open(mark, "w").close()
            print(f"{agent}: transient failure on {task}, try again", file=sys.stderr)
            return 1
        os.unlink(mark)
    print(f"{agent} did task {task}: read {words} words of prompt (sha1 {digest})")
    return 0


def edit_files(prompt: str, task: str, agent: str, words: int, digest: str) -> int:
    """Worktree mode: the task's change, in files (cwd is the task's worktree)."""
    desc = next((line.strip() for line in prompt.split("\n")
                 if line.strip() and not line.startswith(("#", "(", "You ", "When "))), task)
    os.makedirs("notes", exist_ok=True)
    note = os.path.join("notes", f"{task[:8]}.md")
    if "[flaky]" in prompt and not os.path.exists(note):
        with open(note, "w") as f:
            f.write(f"# {desc}\n\ndraft by {agent} (attempt 1)\n")
        print(f"{agent}: transient failure on {task}; the draft stays in the worktree",
              file=sys.stderr)
        return 1
    resumed = os.path.exists(note)
    with open(note, "a") as f:
        if not resumed:
            f.write(f"# {desc}\n\n")
        f.write(f"done by {agent}: read {words} words of prompt (sha1 {digest})\n")
    with open("CHANGELOG.md", "a") as f:
        f.write(f"- {desc} ({agent})\n")
    print(f"{agent} did task {task} on {os.environ.get('TINYTOWN_BRANCH')}"
          + (" (continued the draft of attempt 1)" if resumed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
