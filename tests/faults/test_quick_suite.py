"""The fault suite's short version (bench/faults/run.py --quick) as one test of the main suite.

It injects real faults (kill -9 of daemon / redis / batch, a frozen and a lost Redis, a full disk,
Redis OOM, hostile values in every key the daemon reads, control-socket abuse, config fuzz,
pathological agent CLIs) into real daemons and asserts that every goal of RELIABILITY.md holds:
lost 0, stuck 0, duplicates <= rounds in flight at each crash, crashes 0, hangs 0, every bad
input refused or dead-lettered with a reason. Its table is printed on failure.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.faults
@pytest.mark.timeout(420)
def test_quick_fault_suite(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the fault suite mounts a tmpfs and runs a client as another uid: needs root")
    out = tmp_path / "faults.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "faults" / "run.py"), "--quick",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=400)
    print(p.stdout)
    print(p.stderr[-4000:], file=sys.stderr)
    assert p.returncode == 0, "fault suite goals not met:\n" + p.stdout
