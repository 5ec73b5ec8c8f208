"""The systemd suite: only under scripts/test-systemd, which boots the container and sets
TT_BOX_STATE. The main suite (scripts/test) does not collect these files at all."""
from __future__ import annotations

import os

import pytest

collect_ignore_glob = [] if os.environ.get("TT_BOX_STATE") else ["test_*.py"]


def readme_install_script() -> str:
    """The README's "Running under systemd" commands, up to `systemctl enable --now tinytownd`,
    with the wheel scripts/test-systemd built standing in for /path/to/tinytownd."""
    from tests.support.helpers import ROOT
    text = (ROOT / "README.md").read_text()
    assert "### Running under systemd" in text, "README has no 'Running under systemd' section"
    block = text.split("### Running under systemd", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        lines.append(line.replace("/path/to/tinytownd", "/stage/tinytownd-*.whl"))
        if line.startswith("systemctl enable --now tinytownd"):
            return "\n".join(lines)
    raise AssertionError("README 'Running under systemd': no `systemctl enable --now tinytownd`")


@pytest.fixture(scope="session", autouse=True)
def installed():
    """tinytownd installed in the container exactly as the README says (runs once)."""
    from tests.systemd import machine
    machine.sh("cd /src\n"
               "if [ -f /stage/host-ca.crt ]; then export PIP_CERT=/stage/host-ca.crt; fi\n"
               + readme_install_script(), timeout=600)
