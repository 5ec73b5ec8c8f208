"""`tinytownd batch` in the tests: a batch file for a tiny shell agent, and the command itself."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .helpers import tinytownd_cmd

# A tiny agent CLI: reads the prompt (stdin), fails when the task says FAIL, else reports.
AGENT = ('p="$(cat)"; echo "START $TINYTOWN_TASK_ID" >> "$BT_LOG"; '
         'case "$p" in *FAIL*) echo "no can do" >&2; exit 3;; esac; '
         'sleep "${BT_SLEEP:-0}"; echo "END $TINYTOWN_TASK_ID" >> "$BT_LOG"; '
         'echo "done by $TINYTOWN_AGENT_NAME"')


def write_batch(path: Path, n: int, *, agents: int = 8, fail: set[int] = frozenset(),
                sleep: float = 0.0, max_attempts: int = 2) -> Path:
    """A file of `n` tasks t0..t{n-1} for `agents` AGENT agents named w-1..; the agent logs
    START/END lines to agent.log beside the file."""
    lines = ["agent_clis:",
             f"  t: {{command: {json.dumps(AGENT)}, max_attempts: {max_attempts},",
             f"      env: {{BT_LOG: {json.dumps(str(path.parent / 'agent.log'))}, "
             f"BT_SLEEP: '{sleep}'}}}}",
             f"agents: [{{name: w, role: worker, cli: t, count: {agents}}}]",
             "tasks:"]
    for i in range(n):
        desc = f"task number {i}" + (" FAIL" if i in fail else "")
        lines.append(f"  - {{id: t{i}, description: {json.dumps(desc)}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_env() -> dict:
    """The test's environment, without its REDIS_URL (a batch must never reach the test's Redis)."""
    env = {**os.environ}
    env.pop("REDIS_URL", None)
    return env


def run_batch(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(tinytownd_cmd() + ["batch", *args], cwd=cwd, env=batch_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_batch(*args: str, cwd: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`tinytownd batch ARGS` in the background, stdout piped as text."""
    return subprocess.Popen(tinytownd_cmd() + ["batch", *args], cwd=cwd, env=batch_env(),
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def agent_starts(path: Path) -> dict[str, int]:
    """How often the agent started each task id (from agent.log)."""
    starts: dict[str, int] = {}
    for line in path.read_text().split("\n"):
        if line.startswith("START "):
            starts[line[6:]] = starts.get(line[6:], 0) + 1
    return starts
