#!/bin/sh
# A tiny stand-in for an agent CLI (used by the mission tests and the example config).
# tinytownd runs it once per round with the prompt on stdin. It "works" for a moment and prints
# a result; exit 0 completes the task. A prompt containing FAIL-ALWAYS makes it fail.
prompt=$(cat)
case "$prompt" in
  *FAIL-ALWAYS*) echo "agent: refusing this task" >&2; exit 1 ;;
esac
sleep "${AGENT_SLEEP:-0.1}"
title=$(printf '%s\n' "$prompt" | grep -m1 -o '\[Mission Work Item\] .*' || true)
echo "done: ${title:-task}"
