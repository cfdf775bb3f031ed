"""Each account against the bulk-sender rules: `accounts readiness` and `GET /api/v1/domains`."""

from __future__ import annotations

import json

import aiohttp
import pytest
import yaml
from clirun import run_cli
from conftest import PASSWORD, PASSWORD_HASH, config_data
from dnsserver import DnsServer

from relay.config import parse_config
from relay.domains import check_all
from relay.mail.signing import load_keys
from relay.readiness import DAY, readiness

NOW = 1_800_000_000.0


@pytest.fixture
def dns_server():
    server = DnsServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def data(sqlite_url, upstream, dns_server, tls_files):
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["dns"] = {"nameservers": [dns_server.nameserver], "timeout": 0.5}
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    data["accounts"][1]["api_key_hash"] = PASSWORD_HASH
    config = parse_config(data)
    zones = dns_server.zones
    for key in load_keys(config.dkim)[0]:
        zones.add(key.dns_name, "TXT", key.public_record)
    zones.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=reject")
    zones.add("relay.test.example", "TXT", "v=spf1 a -all")
    zones.add("relay.test.example", "MX", (10, "relay.test.example"))
    return data


async def complaints(store, per_day: list[tuple[int, int]], now: float = NOW) -> None:
    """(delivered, complaints) for each day back from `now`, newest first."""
    rows = []
    for back, (delivered, complained) in enumerate(per_day):
        at = now - back * DAY - 3600
        rows += [("acme", "delivered", at, delivered), ("acme", "complaint", at, complained)]
    await store.add_stats(rows)


async def test_readiness_gives_each_rule_with_its_figure(start_relay, data, tmp_path, clock):
    """A complaint rate that reached 0.3 % on one day fails; the rest holds, with figures."""
    relay = await start_relay(data)
    config = relay.runtime.current.config
    await check_all(config, relay.store, domain="acme.example", now=clock.now())
    now = clock.now()
    await complaints(relay.store, [(2000, 1), (2000, 1), (1000, 4)], now)  # 0.4 % two days ago
    ready = await readiness(config, relay.store, config.account("acme"), now=now)
    rules = {rule.name: rule for rule in ready.rules}
    assert (rules["authentication"].state, rules["authentication"].figure) == (
        "ok",
        "acme.example verified",
    )
    assert rules["complaint_rate"].state == "failing"
    assert rules["complaint_rate"].figure == (
        "0.120 % over 7 days (6 of 5000); highest day in 30: 0.400 %"
    )
    assert rules["one_click_unsubscribe"].state == "ok"
    assert rules["unsubscribe_honoured"].state == "ok"
    assert (rules["tls_to_upstream"].state, rules["tls_to_upstream"].figure) == (
        "failing",
        "upstream.tls: none",
    )
    assert not ready.ready

    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    shown = run_cli("accounts", "readiness", "acme", "--config", str(path), check=False)
    assert shown.returncode == 1
    assert shown.stdout.splitlines()[0] == "acme: not ready"
    assert "  failing  complaint_rate: 0.120 % over 7 days" in shown.stdout


@pytest.mark.parametrize(
    ("per_day", "state"),
    [
        ([(10_000, 5)], "ok"),  # 0.05 %
        ([(10_000, 15)], "warning"),  # 0.15 %: over Gmail's 0.10 % target, under 0.30 %
        ([(10_000, 30)], "failing"),  # 0.30 %: "never"
        ([], "unknown"),  # nothing delivered: nothing to rate
        ([(10_000, 5), (10, 1)], "ok"),  # 10 %, but of 10: under min_volume, no daily rate
    ],
)
async def test_the_complaint_rate_against_the_providers_lines(
    start_relay, data, clock, per_day, state
):
    relay = await start_relay(data)
    config = relay.runtime.current.config
    await complaints(relay.store, per_day, clock.now())
    ready = await readiness(config, relay.store, config.account("acme"), now=clock.now())
    assert {r.name: r.state for r in ready.rules}["complaint_rate"] == state


async def get(relay, account: str, secret: str = PASSWORD):
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{relay.web_port}/api/v1/domains",
            headers={"Authorization": f"Bearer {account}:{secret}"},
        ) as response,
    ):
        return response.status, json.loads(await response.text())


async def test_the_api_shows_an_account_its_own_domains_and_rules(
    start_relay, data, dns_server, clock
):
    """What the CRM shows its customer: requirements with the records to publish; only its own."""
    dns_server.zones.remove("_dmarc.acme.example", "TXT")
    relay = await start_relay(data)
    await check_all(relay.runtime.current.config, relay.store, now=clock.now())
    status, body = await get(relay, "acme")
    assert status == 200
    assert (body["account"], body["ready"]) == ("acme", False)
    (domain,) = body["domains"]
    assert (domain["domain"], domain["status"], domain["settled"]) == (
        "acme.example",
        "failing",
        "failing",
    )
    dmarc = next(r for r in domain["requirements"] if r["name"] == "dmarc")
    assert dmarc["state"] == "missing"
    assert dmarc["publish"] == '_dmarc.acme.example. IN TXT ( "v=DMARC1; p=none" )'
    assert [r["name"] for r in body["rules"]] == [
        "authentication",
        "one_click_unsubscribe",
        "unsubscribe_honoured",
        "complaint_rate",
        "tls_to_upstream",
    ]
    status, other = await get(relay, "globex")
    assert [d["domain"] for d in other["domains"]] == ["globex.example"]
    assert (await get(relay, "acme", "wrong"))[0] == 401
