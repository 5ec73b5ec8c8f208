"""The entry's decisions: batch ids and the exit code of a summary (no Redis)."""
import re

import pytest

from tinytownd import exitcodes
from tinytownd.batch.file import UsageError
from tinytownd.batch.main import check_batch_id, exit_code, new_batch_id


def _totals(total=4, completed=0, failed=0, running=0, queued=0):
    return {"total": total, "completed": completed, "failed": failed, "cancelled": 0,
            "running": running, "queued": queued}


@pytest.mark.parametrize("totals,interrupted,code", [
    (_totals(completed=4), False, exitcodes.OK),
    (_totals(completed=4), True, exitcodes.OK),            # finished while draining
    (_totals(completed=3, failed=1), False, exitcodes.FAILURE),
    (_totals(completed=3, failed=1), True, exitcodes.TEMPFAIL),
    (_totals(completed=2, queued=2), False, exitcodes.TEMPFAIL),
    (_totals(completed=2, failed=1, running=1), False, exitcodes.TEMPFAIL),
])
def test_exit_code(totals, interrupted, code):
    assert exit_code(totals, interrupted) == code


def test_exit_codes_are_the_documented_ones():
    assert (exitcodes.OK, exitcodes.FAILURE, exitcodes.BATCH_USAGE, exitcodes.UNAVAILABLE,
            exitcodes.TEMPFAIL) == (0, 1, 2, 69, 75)


def test_batch_ids():
    bid = new_batch_id()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", bid) and check_batch_id(bid) == bid
    assert check_batch_id("nightly.v2_x-1") == "nightly.v2_x-1"
    for bad in ("", "-x", "a b", "x" * 65, "a/b"):
        with pytest.raises(UsageError, match="batch id"):
            check_batch_id(bad)
