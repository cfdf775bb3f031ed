"""`optin-relay dkim keygen | show | check` (DNS stubbed: the one thing tests may not reach)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from conftest import config_data, dkim_keys

from relay import cli
from relay.cli import dkim as cli_dkim
from relay.config import parse_config
from relay.mail.signing import load_keys, make_key

CLI = [sys.executable, "-m", "relay", "dkim"]


def record_value(output: str) -> str:
    """The TXT value from a printed zone record (its strings joined)."""
    line = next(text for text in output.splitlines() if " IN TXT " in text)
    return "".join(re.findall(r'"([^"]*)"', line))


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_key_and_prints_record(tmp_path, algorithm):
    """The key is written with mode 0600; the printed record is the key's public half."""
    out = tmp_path / "keys" / "acme.s2027.pem"
    result = subprocess.run(
        [
            *CLI,
            "keygen",
            "--domain",
            "acme.example",
            "--selector",
            "s2027",
            "--algorithm",
            algorithm,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stat().st_mode & 0o777 == 0o600
    assert "s2027._domainkey.acme.example. IN TXT" in result.stdout
    key = make_key("acme.example", "s2027", algorithm, out.read_bytes())
    assert record_value(result.stdout) == key.public_record
    if algorithm == "rsa-sha256":
        assert key.bits == 2048
    again = subprocess.run(
        [*CLI, "keygen", "--domain", "acme.example", "--selector", "s2027", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1  # never overwrites a key


def test_show_prints_every_configured_record(tmp_path, sqlite_url, tls_files):
    """`dkim show` prints one record per configured key."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files))
    )
    output = subprocess.run(
        [*CLI, "show", "--config", str(path)], capture_output=True, text=True, check=True
    ).stdout
    names = re.findall(r"^(\S+)\. IN TXT", output, flags=re.MULTILINE)
    assert names == [f"{k['selector']}._domainkey.{k['domain']}" for k in dkim_keys()]


def test_check_compares_published_records(tmp_path, sqlite_url, tls_files, monkeypatch, capsys):
    """`dkim check` says ok, mismatch or not published, with exit 0 only when all match."""
    path = tmp_path / "relay.yaml"
    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    path.write_text(yaml.safe_dump(data))
    keys = {k.dns_name: k for k in load_keys(parse_config(data).dkim)[0]}
    published: dict[str, list[str]] = {}
    monkeypatch.setattr(cli_dkim, "lookup_txt", lambda name: published.get(name, []))

    assert cli.main(["dkim", "check", "--domain", "acme.example", "--config", str(path)]) == 1
    assert "not published" in capsys.readouterr().out

    for name, key in keys.items():
        published[name] = [key.public_record]
    assert cli.main(["dkim", "check", "--domain", "acme.example", "--config", str(path)]) == 0
    assert capsys.readouterr().out.count("\tok") == 2

    published["r2027._domainkey.acme.example"] = [
        keys["r2027._domainkey.globex.example"].public_record
    ]
    assert cli.main(["dkim", "check", "--domain", "acme.example", "--config", str(path)]) == 1
    assert "mismatch" in capsys.readouterr().out
    assert cli.main(["dkim", "check", "--domain", "unknown.example", "--config", str(path)]) == 1


def test_txt_record_splits_long_values():
    """TXT strings are at most 255 characters each."""
    record = cli_dkim.txt_record("s._domainkey.x.example", "v=DKIM1; k=rsa; p=" + "A" * 600)
    strings = re.findall(r'"([^"]*)"', record)
    assert max(map(len, strings)) <= 255
    assert "".join(strings) == "v=DKIM1; k=rsa; p=" + "A" * 600
