"""`optin-relay consent import | show | export` through the command line."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from clirun import run_cli
from conftest import config_data

HEADER = (
    "address,list,method,subscribed_at,confirmed_at,ip,user_agent,consent_text_version,evidence\n"
)


@pytest.fixture
def cfg(tmp_path, store_url, tls_files):
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(config_data(store_url=store_url, upstream_port=25, tls_files=tls_files))
    )
    return path


def cli(cfg, *args, check=True, process=False):
    return run_cli("consent", *args, "--config", str(cfg), check=check, process=process)


def test_import_refuses_rows_without_evidence(cfg, tmp_path):
    """Rows lacking their method's evidence are refused with their line numbers; the rest stored."""
    source = tmp_path / "optins.csv"
    source.write_text(
        HEADER + "ann@example.net,news,confirmed,2026-01-02T10:00:00Z,2026-01-02T10:05:00Z,"
        "192.0.2.1,UA,v2,\n"
        # no confirmation time:
        + "bob@example.net,news,confirmed,2026-01-02T10:00:00Z,,192.0.2.2,UA,v2,\n"
        + "cat@example.net,news,imported,2025-06-01,,,,v1,signup sheet scan 2025-06\n"
        + "dan@example.net,news,imported,,,,,v1,proof\n"  # no subscription time
        + "eve@example.net,news,single,2025-06-01,,,,v1,\n"  # no evidence, no ip
    )
    result = cli(cfg, "import", str(source), "--account", "acme")
    assert "read 5 rows: 2 stored, 3 refused" in result.stdout
    assert "refused line 3: confirmed opt-in needs confirmed_at" in result.stderr
    assert "refused line 5: subscribed_at missing" in result.stderr
    assert "refused line 6: needs evidence or ip" in result.stderr
    shown = [json.loads(line) for line in cli(cfg, "show", "ANN@example.net").stdout.splitlines()]
    assert shown[0]["method"] == "confirmed"
    assert shown[0]["ip"] == "192.0.2.1"
    assert shown[0]["confirmed_at"] - shown[0]["subscribed_at"] == 300
    assert "no opt-in record" in cli(cfg, "show", "bob@example.net").stdout


def test_suspicious_list_flagged_before_storing(cfg, tmp_path):
    """Many role addresses: flagged, nothing stored; --force imports after review."""
    source = tmp_path / "bought.csv"
    rows = [
        f"{role}@company{n}.example,,imported,2025-01-01,,,,,list purchase"
        for n, role in enumerate(["info", "sales", "admin"] * 10)
    ]
    rows += [f"person{n}@example.net,,imported,2025-01-01,,,,,list purchase" for n in range(20)]
    source.write_text(HEADER + "\n".join(rows) + "\n")
    flagged = cli(cfg, "import", str(source), "--account", "acme", check=False)
    assert flagged.returncode == 1
    assert "flag: role addresses: 30 (60%)" in flagged.stderr
    assert "nothing stored" in flagged.stderr
    assert json.loads(cli(cfg, "export", "--account", "acme").stdout) == []
    forced = cli(cfg, "import", str(source), "--account", "acme", "--force")
    assert "50 stored" in forced.stdout


def test_export_is_the_proof(cfg, tmp_path):
    """Export gives every field of the records as JSON, for an appeal."""
    source = tmp_path / "optins.csv"
    source.write_text(
        HEADER + "fan@example.net,news,confirmed,2026-01-02T10:00:00,2026-01-02T10:01:00,"
        "198.51.100.4,Firefox,v3,\n"
    )
    cli(cfg, "import", str(source), "--account", "acme", "--source", "form:newsletter")
    (record,) = json.loads(cli(cfg, "export", "--address", "fan@example.net").stdout)
    assert record["account_id"] == "acme"
    assert record["source"] == "form:newsletter"
    assert record["user_agent"] == "Firefox"
    assert record["consent_text_version"] == "v3"
    assert record["withdrawn_at"] is None


def test_import_into_unknown_account_refused(cfg, tmp_path):
    """The account must exist."""
    source = tmp_path / "x.csv"
    source.write_text(HEADER)
    assert cli(cfg, "import", str(source), "--account", "nobody", check=False).returncode == 1


def test_100k_row_import_with_5_percent_bad_rows(cfg, tmp_path):
    """100,000 rows, 5% without evidence: every bad row named, the 95,000 good ones stored."""
    source = tmp_path / "big.csv"
    lines = [HEADER.rstrip("\n")]
    bad = set(range(0, 100_000, 20))  # every 20th row: 5%
    for n in range(100_000):
        evidence = "" if n in bad else "web form export 2026-02"
        lines.append(f"reader{n}@example.net,news,imported,2026-02-01,,,,v4,{evidence}")
    source.write_text("\n".join(lines) + "\n")
    result = cli(cfg, "import", str(source), "--account", "acme")
    assert "read 100000 rows: 95000 stored, 5000 refused" in result.stdout
    named = re.findall(
        r"^refused line (\d+): needs evidence or ip$", result.stderr, flags=re.MULTILINE
    )
    assert sorted(int(line) for line in named) == sorted(n + 2 for n in bad)  # header is line 1
    exported = json.loads(cli(cfg, "export", "--account", "acme").stdout)
    assert len(exported) == 95_000
