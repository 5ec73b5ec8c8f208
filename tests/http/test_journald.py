"""Log levels reach journald as priorities: with stdout being the journal stream
($JOURNAL_STREAM names its device:inode), every line starts with `<N>` and the JSON after it
stays intact. The README's `journalctl | jq` examples work on a journal that also holds systemd's
lines and the plain-text output of ExecStartPre/ExecReload."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import DaemonProcess
from tests.support.helpers import ROOT

PRIO = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def _journal_env(path: Path) -> dict:
    path.touch()
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _run_and_reload_badly(d: DaemonProcess, env: dict) -> list[str]:
    d.start(env=env)
    good = d.cfg_path.read_text()
    d.write_raw("agents: [oops\n")
    assert d.request("reload")["ok"] is False        # an error line: reload refused
    d.write_raw(good)
    assert d.cli("reload").returncode == 0
    assert d.stop() == 0
    return d.stdout_lines()


def test_priority_prefix_when_stdout_is_the_journal(tmpdir_short):
    d = DaemonProcess(tmpdir_short, http={"listen": None})
    lines = _run_and_reload_badly(d, _journal_env(d.stdout_path))
    assert lines
    seen = set()
    for line in lines:
        m = re.fullmatch(r"<([0-7])>(\{.*\})", line)
        assert m, line
        ev = json.loads(m.group(2))                 # the JSON is intact
        assert int(m.group(1)) == PRIO[ev["level"]], line
        seen.add(ev["level"])
    assert {"info", "error"} <= seen


def test_no_prefix_when_the_stream_is_another_file(tmpdir_short):
    d = DaemonProcess(tmpdir_short, http={"listen": None})
    other = tmpdir_short / "elsewhere"
    lines = _run_and_reload_badly(d, _journal_env(other))
    assert lines and all(line.startswith("{") for line in lines)
    for line in lines:
        json.loads(line)


def readme_jq_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line.split("  #")[0].strip() for line in text.splitlines()
            if line.startswith("journalctl -u tinytownd -o cat | jq")]


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is installed by scripts/_setup.sh")
def test_readme_journalctl_jq_examples_work(tmpdir_short):
    """What `journalctl -u tinytownd -o cat` prints for a start, a refused and a good reload and a
    stop (journald strips the `<N>` prefix): systemd's lines, check-config's and reload's plain
    text, the daemon's JSON. Every README example runs on it, exit 0, and finds what it says."""
    d = DaemonProcess(tmpdir_short, http={"listen": None})
    pre = d.cli("check-config")
    assert pre.returncode == 0
    d.start()
    good = d.cfg_path.read_text()
    d.write_raw("agents: [oops\n")
    bad_reload = d.cli("reload")
    assert d.request("reload")["ok"] is False
    d.write(**{**yaml.safe_load(good), "logging": {"level": "debug"}})
    good_reload = d.cli("reload")
    assert good_reload.returncode == 0
    assert d.stop() == 0
    journal = ["Starting tinytownd.service - tinytownd - supervised Redis-backed runtime...",
               *pre.stdout.splitlines(), *pre.stderr.splitlines()]
    daemon_lines = d.stdout_lines()
    journal += daemon_lines[:3]
    journal += ["Started tinytownd.service - tinytownd - supervised Redis-backed runtime.",
                "Reloading tinytownd.service - tinytownd...",
                *bad_reload.stdout.splitlines(), *bad_reload.stderr.splitlines(),
                "tinytownd.service: Control process exited, code=exited, status=78/CONFIG",
                "Reload failed for tinytownd.service - tinytownd.", "0", "[1, 2]",
                *good_reload.stdout.splitlines(), *good_reload.stderr.splitlines(),
                *daemon_lines[3:], "tinytownd.service: Deactivated successfully."]
    cat = tmpdir_short / "journal.txt"
    cat.write_text("\n".join(journal) + "\n")
    examples = readme_jq_examples()
    assert len(examples) >= 3
    outputs = {}
    for ex in examples:
        cmd = re.sub(r"^journalctl -u tinytownd -o cat", f"cat {cat}", ex)
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, (ex, r.stderr)
        outputs[ex] = r.stdout
    objects = next(v for k, v in outputs.items() if k.endswith("objects'"))
    assert len(objects.splitlines()) == len(daemon_lines)
    errors = next(v for k, v in outputs.items() if '"error"' in k)
    assert errors and all(json.loads(x)["level"] == "error" for x in errors.splitlines())
    reloaded = next(v for k, v in outputs.items() if "reloaded" in k)
    assert "logging.level" in reloaded
