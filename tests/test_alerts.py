"""The shipped alert rules: valid for Prometheus, unit-tested with promtool, all documented.

`config/prometheus/alerts.yml` is checked by `promtool check rules` and tested by `promtool test
rules` against `tests/prometheus/alerts_test.yml` (each alert fires on what should raise it and
stays quiet below its threshold); every metric a rule reads is one the relay exports, and
docs/operations.md explains every alert.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from conftest import ROOT

from relay.metrics import REGISTRY

RULES = ROOT / "config" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


def rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_rules():
    """The file loads in Prometheus (Debian's prometheus package, `.ci/bootstrap`)."""
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_promtool_unit_tests_every_alert():
    """Each alert fires in the unit tests, and each has a quiet case before it."""
    tested = ROOT / "tests" / "prometheus" / "alerts_test.yml"
    result = promtool("test", "rules", str(tested))
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [c for t in yaml.safe_load(tested.read_text())["tests"] for c in t["alert_rule_test"]]
    names = {rule["alert"] for rule in rules()}
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == names
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == names


def test_the_rules_read_metrics_the_relay_exports():
    """A renamed metric breaks this test, not the operators' alerts."""
    exported = {
        sample_name
        for family in REGISTRY.collect()
        for sample_name in (family.name, f"{family.name}_total")
    }
    used = {
        name for rule in rules() for name in re.findall(r"\boptin_relay_\w+", str(rule["expr"]))
    }
    assert used
    assert used <= exported, used - exported


def test_operations_explains_every_alert():
    """docs/operations.md has a paragraph for each alert: what it means, what to do."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Alerts", 1)[1].split("\n## ", 1)[0]
    for rule in rules():
        assert f"`{rule['alert']}`" in section, rule["alert"]
