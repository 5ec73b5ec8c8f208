"""scripts/demo (the README's first command) runs its batch in worktree mode on a repository it
generates: every task on its own branch, main untouched, patches written."""
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.batch import batch_env
from tests.support.gitrepo import branches, git, status

ROOT = Path(__file__).resolve().parents[2]


def test_demo_in_worktree_mode():
    r = subprocess.run([str(ROOT / "scripts" / "demo"), "--progress", "none"], cwd=ROOT,
                       env=batch_env(), capture_output=True, text=True, timeout=300)
    m = re.search(r"rm -rf (/tmp/tinytownd-demo\.\w+)", r.stderr)
    assert m, r.stderr[-2000:]
    demo = Path(m.group(1))
    try:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        repo = demo / "repo"
        got = branches(repo, "demo/*")
        assert len(got) == 12
        assert status(repo) == "" and (repo / "CHANGELOG.md").read_text() == "# Changelog\n\n"
        assert "BRANCH" in r.stdout and "flaky-net  completed  2" in r.stdout
        assert len(os.listdir(demo / "patches")) == 12 and (demo / "junit.xml").exists()
        for br in got:      # every branch: exactly its own line in the shared file
            log = git(repo, "diff", "main", br, "--", "CHANGELOG.md")
            assert len([x for x in log.split("\n") if x.startswith("+- ")]) == 1
        assert not (demo / "batch").exists()
    finally:
        shutil.rmtree(demo, ignore_errors=True)
