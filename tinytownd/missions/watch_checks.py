"""Checking due watches. It runs external commands, so the engine calls it outside the fenced
transaction, with a subprocess timeout and a concurrency cap; the pure tick applies the outcomes.

* PR watches: one `gh pr view N --repo o/r --json ...` per PR per tick, shared by all the due
  watches of that PR. Reading gh's answer: an empty check conclusion falls through to its
  `status` (in_progress / queued = pending); "no checks" counts as success from the second poll
  on; reviews are judged by `reviewDecision`, else by the latest review of each author; bot
  comments count only when newer than the latest commit.
* Command watches: `sh -c COMMAND` in the mission file's directory; exit 0 = triggered (the
  watch is done), another exit code = not yet, a timeout or spawn error = a failed check.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

import gevent

from tinytownd.store.wire import parse_ts

from .tick import WatchOutcome
from .watch import CommandWatch, WatchItem, canonical_pr, parse_pr_ref

PR_FIELDS = "statusCheckRollup,mergeable,reviewDecision,latestReviews,comments,commits"
_SUCCESS = {"success", "neutral", "skipped"}
_PENDING = {"queued", "pending", "in_progress", "expected", "waiting", "requested"}
_FAILURE = {"failure", "failed", "timed_out", "action_required", "cancelled", "error",
            "startup_failure"}
MERGEABLE = {"MERGEABLE", "CLEAN", "HAS_HOOKS", "UNSTABLE"}


class CommandError(Exception):
    pass


def run_command(argv: list[str] | str, *, timeout: float, cwd: str | None = None,
                shell: bool = False, env: dict | None = None) -> tuple[int, str, str]:
    """Run a command with a hard timeout (the whole process group is killed). Cooperative under
    gevent (subprocess is monkey-patched)."""
    try:
        proc = subprocess.Popen(argv, shell=shell, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as e:
        raise CommandError(f"cannot run {argv if isinstance(argv, str) else argv[0]}: "
                           f"{e.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise CommandError(f"timed out after {timeout:g}s") from None
    return proc.returncode, out, err


# ----------------------------------------------------------------------------- gh parsing
@dataclass
class PrState:
    ci: str                     # success | failure | pending | unknown | none (no checks)
    mergeable: bool
    changes_requested: bool
    bot_comments: list[dict] = field(default_factory=list)


def _entry_state(e: dict) -> str:
    raw = ""
    for k in ("conclusion", "state", "status"):
        v = e.get(k)
        if isinstance(v, str) and v.strip():
            raw = v.strip().lower()
            break
    if raw in _SUCCESS:
        return "success"
    if raw in _PENDING:
        return "pending"
    if raw in _FAILURE:
        return "failure"
    return "unknown"


def _dt(v) -> datetime | None:
    try:
        return parse_ts(v.replace("Z", "+00:00")) if isinstance(v, str) else None
    except ValueError:
        return None


def parse_pr(data: dict) -> PrState:
    rollup = data.get("statusCheckRollup") or []
    states = [_entry_state(e) for e in rollup if isinstance(e, dict)]
    if not states:
        ci = "none"
    elif "failure" in states:
        ci = "failure"
    elif "pending" in states:
        ci = "pending"
    elif all(s == "success" for s in states):
        ci = "success"
    elif "success" in states:
        ci = "success"   # unknown + success → success (tt's aggregate)
    else:
        ci = "unknown"
    decision = (data.get("reviewDecision") or "").upper()
    if decision:
        changes = decision == "CHANGES_REQUESTED"
    else:
        latest: dict[str, tuple] = {}
        for r in data.get("latestReviews") or data.get("reviews") or []:
            who = ((r.get("author") or {}).get("login")) or "?"
            at = r.get("submittedAt") or ""
            if who not in latest or at >= latest[who][0]:
                latest[who] = (at, (r.get("state") or "").upper())
        changes = any(s == "CHANGES_REQUESTED" for _, s in latest.values())
    last_commit = None
    for c in data.get("commits") or []:
        d = _dt(c.get("committedDate") or c.get("authoredDate"))
        if d and (last_commit is None or d > last_commit):
            last_commit = d
    bots = []
    for c in data.get("comments") or []:
        login = ((c.get("author") or {}).get("login") or "").lower()
        body = c.get("body") or ""
        if not ("bugbot" in login or "cursor" in login or "bugbot" in body.lower()):
            continue
        at = _dt(c.get("createdAt"))
        if last_commit and at and at <= last_commit:
            continue
        bots.append(c)
    return PrState(ci=ci, mergeable=(data.get("mergeable") or "").upper() in MERGEABLE,
                   changes_requested=changes, bot_comments=bots)


def evaluate(kind: str, pr: PrState, watch: WatchItem) -> tuple[bool, bool]:
    """(triggered, complete) per tt's matrix."""
    ci_ok = pr.ci == "success" or (pr.ci == "none" and watch.last_check_at is not None)
    if kind == "pr_checks":
        if ci_ok:
            return False, True
        return (True, False) if pr.ci == "failure" else (False, False)
    if kind == "bugbot_comments":
        return (True, False) if pr.bot_comments else (False, ci_ok)
    if kind == "review_comments":
        return (True, False) if pr.changes_requested else (False, ci_ok)
    if kind == "mergeability":
        return (True, True) if (pr.mergeable and ci_ok) else (False, False)
    return False, False


class GhClient:
    def __init__(self, gh: str = "gh", timeout_s: float = 30.0, cwd: str | None = None):
        self.gh = gh
        self.timeout_s = timeout_s
        self.cwd = cwd

    def pr_view(self, owner: str, repo: str, number: int) -> dict:
        rc, out, err = run_command([self.gh, "pr", "view", str(number), "--repo",
                                    f"{owner}/{repo}", "--json", PR_FIELDS],
                                   timeout=self.timeout_s, cwd=self.cwd)
        if rc != 0:
            raise CommandError(f"gh pr view {owner}/{repo}#{number} failed ({rc}): "
                               f"{(err or out).strip()[:300]}")
        try:
            data = json.loads(out)
        except ValueError:
            raise CommandError(f"gh pr view {owner}/{repo}#{number}: invalid JSON") from None
        if not isinstance(data, dict):
            raise CommandError(f"gh pr view {owner}/{repo}#{number}: unexpected output")
        return data


def check_pr_watches(watches: list[WatchItem], gh: GhClient, sem=None) -> dict[str, WatchOutcome]:
    """One gh call per PR, shared by all its due watches."""
    by_pr: dict[str, list[WatchItem]] = {}
    out: dict[str, WatchOutcome] = {}
    for w in watches:
        key = canonical_pr(w.target_ref)
        if key is None:
            out[w.id] = WatchOutcome(ok=False, error=f"invalid PR ref {w.target_ref!r}")
            continue
        by_pr.setdefault(key, []).append(w)
    for key, ws in by_pr.items():
        owner, repo, n = parse_pr_ref(key)
        try:
            with sem if sem is not None else nullcontext():
                data = gh.pr_view(owner, repo, n)
            pr = parse_pr(data)
        except CommandError as e:
            for w in ws:
                out[w.id] = WatchOutcome(ok=False, error=str(e))
            continue
        for w in ws:
            trig, comp = evaluate(w.kind, pr, w)
            out[w.id] = WatchOutcome(ok=True, triggered=trig, complete=comp)
    return out


def check_command_watch(w: CommandWatch, sem=None) -> WatchOutcome:
    try:
        with sem if sem is not None else nullcontext():
            rc, _, _ = run_command(w.command, shell=True, cwd=w.cwd, timeout=w.timeout_secs)
    except CommandError as e:
        return WatchOutcome(ok=False, error=str(e))
    return WatchOutcome(ok=True, triggered=rc == 0, complete=rc == 0, exit_code=rc)


def check_due_watches(watches: dict[str, WatchItem], cmd_watches: dict[str, CommandWatch],
                      now: datetime, gh: GhClient, sem=None) -> dict[str, WatchOutcome]:
    """Check every watch due at `now`; the command watches run concurrently (within `sem`). A
    check that crashed has no outcome: the watch stays due."""
    results = {}
    due_pr = [w for w in watches.values() if w.is_due(now)]
    due_cmd = [w for w in cmd_watches.values() if w.is_due(now)]
    if due_pr:
        results.update(check_pr_watches(due_pr, gh, sem))
    if due_cmd:
        jobs = {w.id: gevent.spawn(check_command_watch, w, sem) for w in due_cmd}
        gevent.joinall(list(jobs.values()))
        for wid, g in jobs.items():
            if g.successful():
                results[wid] = g.value
    return results
