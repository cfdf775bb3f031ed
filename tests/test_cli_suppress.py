"""`optin-relay suppress ...` through the command line, on both backends."""

from __future__ import annotations

import csv
import io

import pytest
import yaml
from clirun import run_cli
from conftest import config_data


@pytest.fixture
def cfg(tmp_path, store_url, tls_files):
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(config_data(store_url=store_url, upstream_port=25, tls_files=tls_files))
    )
    return path


def cli(cfg, *args, stdin=None, check=True, process=False):
    return run_cli(
        "suppress", *args, "--config", str(cfg), stdin=stdin, check=check, process=process
    )


def test_add_check_remove_with_audit(cfg):
    """Add, check (case-insensitive), remove with a reason; the audit shows both changes."""
    assert (
        cli(cfg, "add", "Alice@Example.net", "--account", "acme").stdout
        == "alice@example.net\tacme\tadded\n"
    )
    assert "already suppressed" in cli(cfg, "add", "alice@example.net", "--account", "acme").stdout
    checked = cli(cfg, "check", "ALICE@example.net", "--account", "acme").stdout
    assert checked.startswith("alice@example.net\tsuppressed\tacme\tmanual\tcli\t")
    assert "not suppressed" in cli(cfg, "check", "alice@example.net", "--account", "globex").stdout

    missing_reason = cli(cfg, "remove", "alice@example.net", "--account", "acme", check=False)
    assert missing_reason.returncode == 2
    removed = cli(
        cfg, "remove", "alice@example.net", "--account", "acme", "--reason", "asked by phone"
    )
    assert removed.stdout == "alice@example.net\tacme\tremoved\n"
    assert (
        cli(
            cfg, "remove", "alice@example.net", "--account", "acme", "--reason", "x", check=False
        ).returncode
        == 1
    )
    history = cli(cfg, "check", "alice@example.net").stdout
    assert "add acme by cli:" in history
    assert "remove acme by cli:" in history
    assert "asked by phone" in history


def test_import_export_round_trip(cfg, tmp_path):
    """Import a CSV (bad rows refused with their line numbers), export it back."""
    source = tmp_path / "list.csv"
    rows = ["address,reason"] + [f"user{n}@example.net,unsubscribe" for n in range(12000)]
    rows[5] = "not-an-address,unsubscribe"
    rows[9] = "ok@example.net,weird-reason"
    source.write_text("\n".join(rows) + "\n")
    result = cli(cfg, "import", str(source), "--global")
    assert "read 12000 rows: 11998 added, 0 already suppressed, 2 refused" in result.stdout
    assert "refused rows (line numbers): 6, 10" in result.stderr
    assert "100%" in result.stderr  # progress reported (a line every 10% off a terminal)
    again = cli(cfg, "import", str(source), "--global")
    assert "0 added, 11998 already suppressed" in again.stdout

    exported = list(csv.DictReader(io.StringIO(cli(cfg, "export", "--global").stdout)))
    assert len(exported) == 11998
    assert {row["scope"] for row in exported} == {"*"}
    assert {row["reason"] for row in exported} == {"unsubscribe"}
    assert exported[0]["source"] == "list.csv"
    listed = cli(cfg, "list", "--global", "--limit", "5").stdout.splitlines()
    assert len(listed) == 5


def test_import_needs_address_column(cfg, tmp_path):
    """A CSV without an address column is a usage error."""
    source = tmp_path / "bad.csv"
    source.write_text("email\nx@example.net\n")
    assert cli(cfg, "import", str(source), "--account", "acme", check=False).returncode == 2


def test_import_from_stdin(cfg):
    """`-` reads the CSV from standard input."""
    result = cli(  # the real command line, as a subprocess reading its stdin
        cfg,
        "import",
        "-",
        "--account",
        "acme",
        stdin="address\na@example.net\nb@example.net\n",
        process=True,
    )
    assert "2 added" in result.stdout
