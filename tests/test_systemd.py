"""The systemd unit is hardened as promised and passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT

UNIT = ROOT / "systemd" / "optin-relay.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_is_hardened():
    """Dedicated user, state dir, read-only system, no new privileges, one capability."""
    unit = directives()
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


def test_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` is clean (with the binary path pointed at this checkout)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (`make test` installs it)"
    binary = ROOT / ".venv" / "bin" / "optin-relay"
    unit = tmp_path / "optin-relay.service"
    unit.write_text(UNIT.read_text().replace("/opt/optin-relay/bin/optin-relay", str(binary)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
