#!/usr/bin/env python3
"""A stand-in for a real agent CLI (claude -p, codex exec, aider, ...): it takes its prompt the
way the real one does and prints exactly what the real one prints (a fixture of
tests/fixtures/agent_cli, see SOURCES.md there), with the exit status given.

  fake_agent.py [options] [PROMPT-OR-PATH]
    --prompt stdin|file|arg    where the prompt comes from (file/arg: the last argument)
    --save PATH                write the prompt received to PATH (bytes, exactly)
    --print FIXTURE            print this fixture (a name under tests/fixtures/agent_cli)
    --exit N                   exit status (default 0)
    --first N:FIXTURE:EXIT     the first N rounds (counted in --counter) print FIXTURE and exit
                               EXIT instead
    --fail-while PATH:FIXTURE:EXIT  while PATH exists, print FIXTURE and exit EXIT instead
                               (a broken API key, fixed by removing PATH)
    --counter PATH             a file counting this CLI's rounds (shared by every agent)
    --record PATH              append "start|end <epoch> <agent>" lines (overlap checks)
    --sleep S                  sleep before printing
    --usage JSON               write JSON to $TINYTOWN_USAGE_FILE
    --hang                     print one line, then wait for ever without output
"""
import argparse
import fcntl
import os
import sys
import time

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                        "agent_cli")


def bump(path: str) -> int:
    """This round's number (1, 2, ...) in the shared counter file."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
        return n


def record(path: str | None, what: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {time.time():.6f} {os.environ.get('TINYTOWN_AGENT_NAME', '')}\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="stdin", choices=("stdin", "file", "arg"))
    ap.add_argument("--save")
    ap.add_argument("--print", dest="fixture")
    ap.add_argument("--exit", type=int, default=0)
    ap.add_argument("--first")
    ap.add_argument("--fail-while")
    ap.add_argument("--counter")
    ap.add_argument("--record")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--usage")
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    if a.prompt == "stdin":
        prompt = sys.stdin.buffer.read()
    elif a.prompt == "file":
        with open(a.rest[-1], "rb") as f:
            prompt = f.read()
    else:
        prompt = os.fsencode(a.rest[-1])
    if a.save:
        with open(a.save, "wb") as f:
            f.write(prompt)
    record(a.record, "start")
    fixture, code = a.fixture, a.exit
    if a.first and a.counter:
        n, fx, ex = a.first.split(":")
        if bump(a.counter) <= int(n):
            fixture, code = fx or None, int(ex)
    elif a.counter:
        bump(a.counter)
    if a.fail_while:
        path, fx, ex = a.fail_while.split(":")
        if os.path.exists(path):
            fixture, code = fx, int(ex)
    if a.sleep:
        time.sleep(a.sleep)
    if a.usage and os.environ.get("TINYTOWN_USAGE_FILE"):
        with open(os.environ["TINYTOWN_USAGE_FILE"], "w") as f:
            f.write(a.usage)
    if fixture:
        with open(os.path.join(FIXTURES, fixture), "rb") as f:
            sys.stdout.buffer.write(f.read())
    sys.stdout.flush()
    if a.hang:
        print("waiting for input", flush=True)
        time.sleep(3600)
    record(a.record, "end")
    return code


if __name__ == "__main__":
    sys.exit(main())
