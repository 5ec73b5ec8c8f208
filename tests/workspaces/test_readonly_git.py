"""A repository whose .git the daemon cannot write (systemd's ProtectSystem=strict without
ReadWritePaths=): refused naming the key, and the message says which drop-in line fixes it. Real:
a read-only bind mount in a mount namespace of the test's own."""
import shutil
import subprocess

import pytest
import yaml

from tests.support.helpers import tinytownd_cmd


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs mount namespaces (root)")
def test_read_only_git_dir_refused_with_the_drop_in_hint(tmp_path, repo):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "town": {"name": "t", "root": str(tmp_path)},
        "agent_clis": {"c": {"command": "true"}},
        "agents": [{"name": "w", "cli": "c", "workspace": {"mode": "worktree",
                                                            "repo": str(repo)}}]}))
    git_dir = repo / ".git"
    script = (f'mount --bind "{git_dir}" "{git_dir}" && '
              f'mount -o remount,ro,bind "{git_dir}" && exec "$@"')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *tinytownd_cmd(),
                        "check-config", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 78, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "agents[0].workspace.repo" in out and f"ReadWritePaths={repo}" in out, out
    # outside the namespace the same config is fine
    r = subprocess.run([*tinytownd_cmd(), "check-config", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
