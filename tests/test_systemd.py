"""The systemd unit is hardened as promised and passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT

UNIT = ROOT / "systemd" / "optin-relay.service"
TEMPLATE = ROOT / "systemd" / "optin-relay@.service"


def directives(unit=UNIT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("path", [UNIT, TEMPLATE], ids=lambda p: p.name)
def test_unit_is_hardened(path):
    """Dedicated user, state dir, read-only system, no new privileges, one capability."""
    unit = directives(path)
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["optin-relay"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["ExecStartPre"][0].endswith("optin-relay check-config")
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_template_runs_one_process_per_http_port():
    """Instances share one user (so one state directory) and serve HTTP on the instance's port."""
    unit = directives(TEMPLATE)
    assert unit["User"] == ["optin-relay"]
    assert unit["ExecStart"] == ["/opt/optin-relay/bin/optin-relay serve --web-listen 127.0.0.1:%i"]


@pytest.mark.parametrize(
    ("path", "name"),
    [(UNIT, "optin-relay.service"), (TEMPLATE, "optin-relay@8026.service")],
    ids=["unit", "template"],
)
def test_systemd_analyze_verify(tmp_path, path, name):
    """`systemd-analyze verify` is clean (with the binary path pointed at this checkout)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (`make test` installs it)"
    binary = ROOT / ".venv" / "bin" / "optin-relay"
    unit = tmp_path / name
    unit.write_text(path.read_text().replace("/opt/optin-relay/bin/optin-relay", str(binary)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
