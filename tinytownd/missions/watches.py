"""Watch checks (tinytown-missions.md §4.7, with the B9 fixes). Runs external commands, so it is
called by the engine *outside* the fenced transaction; the pure scheduler applies the outcomes.

* PR watches: one `gh pr view N --repo o/r --json …` per PR per tick, shared by the four watch
  kinds of that PR (B9), with a subprocess timeout and a concurrency cap.
  Parsing fixes: an empty conclusion falls through to `status` (in_progress/queued → pending);
  "no checks" counts as success from the second poll on; reviews judged by `reviewDecision`
  (else the latest review per author); bot comments only when newer than the latest commit.
* Command watches (offline): `sh -c COMMAND` in the mission file's directory; exit 0 = triggered
  (the watch is done), other exit codes = not yet, timeout / spawn error = a failed check.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import datetime

from tinytownd.store.wire import parse_ts
from tinytownd.missions.model import CommandWatch, WatchItem
from tinytownd.missions.scheduler import WatchOutcome

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


# ----------------------------------------------------------------------------- PR refs
_URL = re.compile(r"github\.com/([^/\s]+)/([^/\s]+)/pull/(\d+)")
_SHORT = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#(\d+)$")


def parse_pr_ref(ref: str) -> tuple[str, str, int] | None:
    ref = ref.strip()
    m = _URL.search(ref) or _SHORT.match(ref)
    if not m:
        return None
    return m.group(1), m.group(2), int(m.group(3))


def canonical_pr(ref: str) -> str | None:
    p = parse_pr_ref(ref)
    return f"{p[0]}/{p[1]}#{p[2]}" if p else None


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
            if sem is not None:
                with sem:
                    data = gh.pr_view(owner, repo, n)
            else:
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
        if sem is not None:
            with sem:
                rc, _, _ = run_command(w.command, shell=True, cwd=w.cwd,
                                       timeout=w.timeout_secs)
        else:
            rc, _, _ = run_command(w.command, shell=True, cwd=w.cwd, timeout=w.timeout_secs)
    except CommandError as e:
        return WatchOutcome(ok=False, error=str(e))
    return WatchOutcome(ok=True, triggered=rc == 0, complete=rc == 0, exit_code=rc)
