"""Reading gh's answers for PR watches (watch_checks.py)."""
from __future__ import annotations

from tinytownd.missions.watch import WatchItem, canonical_pr
from tinytownd.missions.watch_checks import evaluate, parse_pr
from tinytownd.store.wire import utcnow


def test_gh_parsing_fixes():
    w = WatchItem(id="x", mission_id="m", work_item_id="w", kind="pr_checks", target_ref="o/r#1")
    running = parse_pr({"statusCheckRollup": [{"name": "a", "status": "IN_PROGRESS",
                                               "conclusion": ""},
                                              {"name": "b", "conclusion": "SUCCESS"}]})
    assert running.ci == "pending" and evaluate("pr_checks", running, w) == (False, False)
    failed = parse_pr({"statusCheckRollup": [{"context": "ci", "state": "FAILURE"}]})
    assert evaluate("pr_checks", failed, w) == (True, False)
    none = parse_pr({"statusCheckRollup": []})
    assert evaluate("pr_checks", none, w) == (False, False)        # first poll: wait
    w.last_check_at = utcnow()
    assert evaluate("pr_checks", none, w) == (False, True)         # then: no checks = green
    old_bot = parse_pr({"comments": [{"author": {"login": "cursor-bugbot"}, "body": "bug",
                                      "createdAt": "2025-01-01T00:00:00Z"}],
                        "commits": [{"committedDate": "2025-01-02T00:00:00Z"}]})
    assert old_bot.bot_comments == []                               # older than the last commit
    rev = parse_pr({"latestReviews": [
        {"author": {"login": "a"}, "state": "CHANGES_REQUESTED", "submittedAt": "2025-01-01T00:00:00Z"},
        {"author": {"login": "a"}, "state": "APPROVED", "submittedAt": "2025-01-02T00:00:00Z"}]})
    assert not rev.changes_requested
    assert parse_pr({"reviewDecision": "CHANGES_REQUESTED"}).changes_requested
    assert canonical_pr("https://github.com/o/r/pull/5") == canonical_pr("o/r#5") == "o/r#5"
    assert canonical_pr("not-a-pr") is None
