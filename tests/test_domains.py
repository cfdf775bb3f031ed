"""Sending domains proven in DNS: `domains check` against a real DNS server on loopback.

The server (tests/dnsserver.py, dnslib) serves the test zones; the relay's resolver is pointed
at it with `dns.nameservers`. No public DNS is asked.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import aiosmtplib
import pytest
import yaml
from clirun import run_cli
from conftest import PASSWORD, config_data, settles, simple_message, smtp_client
from dnsserver import DnsServer

from policies.domain_auth import DOMAINS_FRESH
from relay.config import parse_config
from relay.domains import check_all, organisational_domain
from relay.mail.signing import load_keys
from relay.storage import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from relay.config import Config
    from relay.storage.base import Store

NOW = 1_800_000_000.0
SENDING_IP = "192.0.2.25"


@pytest.fixture
def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    server.start()
    yield server
    server.stop()


def relay_config(tmp_path: Path, url: str, dns_server: DnsServer, tls_files) -> Path:
    data = config_data(store_url=url, upstream_port=9, tls_files=tls_files)
    data["dns"] = {"nameservers": [dns_server.nameserver], "timeout": 0.5}
    data["deliverability"] = {"sending_ips": [SENDING_IP]}
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def publish_everything(dns_server: DnsServer, config: Config) -> None:
    """What acme.example and the envelope domain should publish, all of it right."""
    zones = dns_server.zones
    for key in load_keys(config.dkim)[0]:
        zones.add(key.dns_name, "TXT", key.public_record)
    zones.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine; adkim=s")
    zones.add("relay.test.example", "TXT", f"v=spf1 ip4:{SENDING_IP}/32 -all")
    zones.add("relay.test.example", "MX", (10, "relay.test.example"))


@pytest.fixture
async def setup(tmp_path, sqlite_url, dns_server, tls_files):
    path = relay_config(tmp_path, sqlite_url, dns_server, tls_files)
    config = parse_config(yaml.safe_load(path.read_text()), base_dir=tmp_path)
    store = open_store(sqlite_url)
    await store.open()
    await store.migrate()
    publish_everything(dns_server, config)
    yield path, config, store
    await store.close()


async def acme(config: Config, store: Store, now: float = NOW):
    (found,) = await check_all(config, store, domain="acme.example", now=now)
    return found, {r.name: r for r in found.requirements}


async def test_everything_published_is_verified_and_printed(setup):
    """Each requirement ok; `domains check` exits 0 and says what it found."""
    path, _, _ = setup
    result = run_cli("domains", "check", "acme.example", "--config", str(path), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "acme.example (account acme): verified"
    assert (
        "  ok       dkim r2027: r2027._domainkey.acme.example publishes the configured key" in lines
    )
    assert (
        "  ok       dkim e2027: e2027._domainkey.acme.example publishes the configured key" in lines
    )
    assert (
        "  ok       dmarc: p=quarantine at _dmarc.acme.example;"
        " the relay's d=acme.example aligns (strict)"
    ) in lines
    assert f"  ok       envelope spf: relay.test.example: v=spf1 ip4:{SENDING_IP}/32 -all" in lines
    assert "  ok       envelope mx: relay.test.example MX relay.test.example" in lines
    shown = json.loads(
        run_cli("domains", "check", "--json", "--config", str(path), check=False).stdout
    )
    assert {(c["domain"], c["status"]) for c in shown} == {
        ("acme.example", "verified"),
        ("globex.example", "failing"),  # nothing published for it
    }


async def test_a_missing_dmarc_record_fails_with_the_record_to_publish(setup, dns_server):
    path, _, _ = setup
    dns_server.zones.remove("_dmarc.acme.example", "TXT")
    result = run_cli(
        "domains", "check", "acme.example", "--config", str(path), check=False, process=True
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "acme.example (account acme): failing"
    assert "  missing  dmarc: no DMARC record for acme.example" in lines
    assert '           publish: _dmarc.acme.example. IN TXT ( "v=DMARC1; p=none" )' in lines


async def test_the_organisational_domains_dmarc_record_counts(
    tmp_path, sqlite_url, dns_server, tls_files
):
    """RFC 7489 6.6.3: no record at the From domain, then the organisational domain's.

    The Public Suffix List finds it: acme.example for news.acme.example, example.co.uk for
    mail.example.co.uk; a public suffix itself (example) is never asked.
    """
    assert organisational_domain("news.acme.example") == "acme.example"
    assert organisational_domain("mail.example.co.uk") == "example.co.uk"
    data = yaml.safe_load(relay_config(tmp_path, sqlite_url, dns_server, tls_files).read_text())
    data["accounts"][0]["from_domains"].append("news.acme.example")
    rsa = next(
        k for k in data["dkim"] if k["domain"] == "acme.example" and k["selector"] == "r2027"
    )
    data["dkim"].append({**rsa, "domain": "news.acme.example"})
    config = parse_config(data, base_dir=tmp_path)
    store = open_store(sqlite_url)
    await store.open()
    await store.migrate()
    try:
        publish_everything(dns_server, config)
        dns_server.zones.add("_dmarc.example", "TXT", "v=DMARC1; p=reject")
        (found,) = await check_all(config, store, domain="news.acme.example", now=NOW)
        by_name = {r.name: r for r in found.requirements}
        assert found.status == "verified", found
        assert by_name["dmarc"].found == (
            "p=quarantine at _dmarc.acme.example; the relay's d=news.acme.example aligns (strict)"
        )
        dns_server.zones.remove("_dmarc.acme.example", "TXT")
        (found,) = await check_all(config, store, domain="news.acme.example", now=NOW)
        assert {r.name: r.state for r in found.requirements}["dmarc"] == "missing"
        assert ("_dmarc.example", "TXT") not in dns_server.zones.asked
    finally:
        await store.close()


async def test_during_a_rotation_the_unpublished_key_fails(setup, dns_server):
    """Both keys are configured; only the old one's record is out: the new one is missing."""
    _, config, store = setup
    dns_server.zones.remove("e2027._domainkey.acme.example", "TXT")
    found, by_name = await acme(config, store)
    assert found.status == "failing"
    assert by_name["dkim r2027"].state == "ok"
    assert by_name["dkim e2027"].state == "missing"
    assert by_name["dkim e2027"].publish.startswith(
        'e2027._domainkey.acme.example. IN TXT ( "v=DKIM1; k=ed25519; p='
    )
    # another key than the configured one at the selector: failing, not missing
    dns_server.zones.add("e2027._domainkey.acme.example", "TXT", "v=DKIM1; k=ed25519; p=AAAA")
    found, by_name = await acme(config, store)
    assert by_name["dkim e2027"].state == "failing"


async def test_spf_missing_or_not_allowing_the_sending_ips_fails(setup, dns_server):
    _, config, store = setup
    dns_server.zones.remove("relay.test.example", "TXT")
    found, by_name = await acme(config, store)
    assert (found.status, by_name["envelope spf"].state) == ("failing", "missing")
    assert by_name["envelope spf"].publish == (
        f'relay.test.example. IN TXT ( "v=spf1 ip4:{SENDING_IP} -all" )'
    )
    dns_server.zones.add("relay.test.example", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    found, by_name = await acme(config, store)
    assert by_name["envelope spf"].state == "failing"
    assert SENDING_IP in by_name["envelope spf"].found
    dns_server.zones.remove("relay.test.example", "MX")
    found, by_name = await acme(config, store)
    assert by_name["envelope mx"].state == "missing"
    assert by_name["envelope mx"].publish == ("relay.test.example. IN MX 10 relay.test.example.")


@pytest.mark.parametrize("outage", ["servfail", "silent"])
async def test_a_dns_outage_leaves_a_verified_domain_verified(setup, dns_server, outage):
    """SERVFAIL or no reply at all: unknown, and the last conclusive status stays."""
    _, config, store = setup
    found, _ = await acme(config, store)
    assert (found.status, found.settled, found.settled_at) == ("verified", "verified", NOW)
    names = {name for name, _ in dns_server.zones.records}
    getattr(dns_server.zones, outage).update(names)
    found, by_name = await acme(config, store, now=NOW + 60)
    assert found.status == "unknown"
    assert {r.state for r in found.requirements} == {"unknown"}
    assert "the DNS did not answer" in by_name["dmarc"].found
    (kept,) = await store.domain_checks("acme")
    assert (kept.status, kept.settled, kept.settled_at) == ("unknown", "verified", NOW)
    assert kept.checked_at == NOW + 60


async def test_a_domain_becomes_verified_once_its_records_appear(setup, dns_server):
    """Failing, then the record is published: the next check verifies it, no restart."""
    _, config, store = setup
    dns_server.zones.remove("r2027._domainkey.acme.example", "TXT")
    found, _ = await acme(config, store)
    assert (found.status, found.settled) == ("failing", "failing")
    key = next(
        k
        for k in load_keys(config.dkim)[0]
        if k.dns_name.startswith("r2027.") and k.domain == "acme.example"
    )
    dns_server.zones.add(key.dns_name, "TXT", key.public_record)
    found, _ = await acme(config, store, now=NOW + 3600)
    assert (found.status, found.settled, found.settled_at) == ("verified", "verified", NOW + 3600)
    assert [c.status for c in await store.domain_checks()] == ["verified"]


async def test_checks_are_kept_on_postgresql_too(tmp_path, pg_url, dns_server, tls_files):
    path = relay_config(tmp_path, pg_url, dns_server, tls_files)
    config = parse_config(yaml.safe_load(path.read_text()), base_dir=tmp_path)
    store = open_store(pg_url)
    await store.open()
    await store.migrate()
    try:
        publish_everything(dns_server, config)
        found, _ = await acme(config, store)
        dns_server.zones.servfail.add("_dmarc.acme.example")
        later, _ = await acme(config, store, now=NOW + 1)
        assert (found.status, later.status, later.settled) == ("verified", "unknown", "verified")
        assert await store.domain_checks("acme") == [later]
    finally:
        await store.close()


def relay_data(url: str, dns_server: DnsServer, tls_files, upstream, mode: str | None) -> dict:
    data = config_data(store_url=url, upstream_port=upstream.port, tls_files=tls_files)
    data["dns"] = {"nameservers": [dns_server.nameserver], "timeout": 0.5}
    data["deliverability"] = {"sending_ips": [SENDING_IP]}
    data["policies"] = {"domain_auth": {"mode": mode} if mode else {}}
    return data


async def statuses(store: Store) -> list[tuple[str, str]]:
    return [(c.domain, c.status) for c in await store.domain_checks("acme")]


async def test_enforced_mail_from_a_failing_domain_is_refused_until_its_record_is_published(
    start_relay, tmp_path, sqlite_url, dns_server, tls_files, upstream, clock, log_lines
):
    """550 5.7.26 at MAIL naming the missing record, then accepted once it is published.

    `domains check` runs after the record appears; the relay reads the checks again within
    DOMAINS_FRESH seconds and accepts: no reload, no restart.
    """
    data = relay_data(sqlite_url, dns_server, tls_files, upstream, "enforce")
    publish_everything(dns_server, parse_config(data))
    dns_server.zones.remove("_dmarc.acme.example", "TXT")
    relay = await start_relay(data)
    # checked at start, in the background
    await settles(lambda: statuses(relay.store), [("acme.example", "failing")], timeout=30)
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail("news@acme.example")
    assert refused.value.code == 550
    assert refused.value.message.startswith(
        "5.7.26 acme.example is not authenticated: dmarc (_dmarc.acme.example TXT)."
    )
    await client.rset()
    dns_server.zones.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=none")
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    assert run_cli("domains", "check", "acme.example", "--config", str(path)).returncode == 0
    clock.advance(DOMAINS_FRESH)
    await client.sendmail("news@acme.example", ["alice@example.net"], simple_message())
    await client.quit()
    refusals = [e for e in log_lines() if e.get("rule") == "domain_auth.unverified"]
    assert refusals
    assert refusals[0]["reply"].startswith("550 5.7.26")


async def test_in_monitor_mode_the_mail_flows_and_the_refusal_is_logged(
    start_relay, sqlite_url, dns_server, tls_files, upstream, log_lines
):
    data = relay_data(sqlite_url, dns_server, tls_files, upstream, None)  # monitor: the default
    publish_everything(dns_server, parse_config(data))
    dns_server.zones.remove("relay.test.example", "MX")
    relay = await start_relay(data)
    await settles(lambda: statuses(relay.store), [("acme.example", "failing")], timeout=30)
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.sendmail("news@acme.example", ["alice@example.net"], simple_message())
    await client.quit()
    (would,) = [e for e in log_lines() if e["event"] == "policy_would_refuse"]
    assert (would["policy"], would["rule"]) == ("domain_auth", "domain_auth.unverified")
    assert "envelope mx (relay.test.example MX)" in would["reply"]
    checked = [e for e in log_lines() if e["event"] == "domains_checked"]
    assert checked[0]["not_verified"] == [
        "acme/acme.example:failing",
        "globex/globex.example:failing",
    ]


async def test_each_relay_looks_again_every_recheck(
    start_relay, sqlite_url, dns_server, tls_files, upstream
):
    """With `domain_auth` on, the relay checks at start and every `deliverability.recheck`.

    A record published later is found with no command and no restart.
    """
    data = relay_data(sqlite_url, dns_server, tls_files, upstream, "enforce")
    data["deliverability"]["recheck"] = 0.2
    publish_everything(dns_server, parse_config(data))
    dns_server.zones.remove("relay.test.example", "MX")
    relay = await start_relay(data)
    await settles(lambda: statuses(relay.store), [("acme.example", "failing")], timeout=30)
    dns_server.zones.add("relay.test.example", "MX", (10, "relay.test.example"))
    await settles(lambda: statuses(relay.store), [("acme.example", "verified")], timeout=30)


async def test_without_a_dns_server_to_ask_domains_check_says_so(setup, monkeypatch):
    """No `dns.nameservers` and none in /etc/resolv.conf: a clear error, exit 1, no crash."""
    import dns.asyncresolver
    import dns.resolver

    path, _, _ = setup
    data = yaml.safe_load(path.read_text())
    data["dns"] = {}
    path.write_text(yaml.safe_dump(data))

    def no_servers(self, filename="/etc/resolv.conf"):
        raise dns.resolver.NoResolverConfiguration(filename)

    monkeypatch.setattr(dns.asyncresolver.Resolver, "read_resolv_conf", no_servers)
    result = run_cli("domains", "check", "--config", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no DNS server to ask")
    assert "set dns.nameservers" in result.stderr
