"""Terms of use: refused at MAIL without them, accepted through a signed link, a grace period."""

from __future__ import annotations

import asyncio
import re
from email import message_from_bytes

import aiohttp
import aiosmtplib
import yaml
from clirun import run_cli
from conftest import PASSWORD, config_data, eventually, simple_message, smtp_client

from relay.clock import ManualClock, to_datetime
from relay.config import parse_config
from relay.feedback import cases
from relay.storage.records import Case, new_case_id

LOGIN = ("acme-crm", PASSWORD)
TERMS_URL = "https://relay.test.example/terms/2026-11"


def with_terms(data, **fields):
    data["terms"] = {"version": "2026-11", "url": TERMS_URL, **fields}
    return data


async def mail_from(relay) -> tuple[int, str]:
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    try:
        await client.sendmail("news@acme.example", ["ann@example.net"], simple_message())
    except aiosmtplib.SMTPSenderRefused as exc:
        return exc.code, exc.message
    finally:
        await client.quit()
    return 250, ""


def reminders(upstream):
    return [m for m in upstream.messages if m.rcpt == "abuse-desk@acme.example"]


async def test_refused_without_terms_then_accepted_through_the_signed_link(
    start_relay, store_url, tls_files, upstream, log_lines
):
    """An account without the current terms is refused at MAIL; the link records who accepted."""
    data = with_terms(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files),
        published="2020-01-01T00:00:00Z",
    )
    relay = await start_relay(data)
    code, text = await mail_from(relay)
    assert code == 550
    assert text == (
        "5.7.1 Account acme has not accepted the terms of use version 2026-11"
        f" ({TERMS_URL}); its contact has a link to accept them"
    )
    await eventually(lambda: len(reminders(upstream)) == 1)
    body = reminders(upstream)[0].message.get_payload(decode=True).decode()
    link = re.search(r"https://relay\.test\.example(/terms/acme/\S+)", body)
    assert link, body
    assert "never unsolicited bulk email" in body
    base = f"http://127.0.0.1:{relay.web_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + link.group(1)) as response:
            assert response.status == 200
            page = await response.text()
            assert "version <strong>2026-11</strong>" in page
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert await relay.store.terms_accepted("acme") == []  # a GET changes nothing
        forged = link.group(1)[:-3] + "AAA"
        async with http.post(base + forged) as response:
            assert response.status == 400
        headers = {"User-Agent": "Mozilla/5.0 (abuse desk test)"}
        async with http.post(base + link.group(1), headers=headers) as response:
            assert response.status == 200
            assert "accepted version 2026-11" in await response.text()
    (accepted,) = await relay.store.terms_accepted("acme")
    assert (accepted.version, accepted.ip, accepted.user_agent) == (
        "2026-11",
        "127.0.0.1",
        "Mozilla/5.0 (abuse desk test)",
    )
    assert accepted.accepted_by == "web:abuse-desk@acme.example"
    assert accepted.accepted_at == relay.clock.now()
    assert (await mail_from(relay))[0] == 250
    assert [e["version"] for e in log_lines() if e["event"] == "terms_accepted"] == ["2026-11"]


async def test_a_new_version_has_a_grace_period_and_one_reminder(
    start_relay, sqlite_url, tls_files, upstream, clock: ManualClock, tmp_path
):
    """Mail flows for terms.grace after a new version; the contact is reminded once."""
    published = to_datetime(clock.now()).isoformat()
    data = with_terms(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files),
        published=published,
        grace="14d",
    )
    relay = await start_relay(data)
    assert [(await mail_from(relay))[0] for _ in range(3)] == [250, 250, 250]
    await eventually(lambda: len(reminders(upstream)) == 1)
    await asyncio.sleep(0.2)
    assert len(reminders(upstream)) == 1  # once per version
    clock.advance(14 * 86400 + 1)
    assert (await mail_from(relay))[0] == 550

    # An acceptance given otherwise, recorded by the operator
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    done = await asyncio.to_thread(
        run_cli,
        "accounts",
        "accept-terms",
        "acme",
        "--version",
        "2026-11",
        "--by",
        "Jo Smith",
        "--config",
        str(path),
    )
    assert done.stdout.startswith("acme\taccepted terms 2026-11\tby Jo Smith (cli")
    shown = await asyncio.to_thread(run_cli, "accounts", "show", "acme", "--config", str(path))
    assert "terms\t2026-11 accepted" in shown.stdout
    assert (await mail_from(relay))[0] == 250


async def test_case_notice_quotes_the_accepted_version_and_its_clause(
    store, tls_files, clock: ManualClock
):
    """A complaint's notice reminds the account what it accepted about bulk mail."""
    from relay.storage.records import TermsAcceptance

    config = parse_config(
        with_terms(
            config_data(store_url="sqlite:///unused.db", upstream_port=25, tls_files=tls_files),
            bulk_clause="No unsolicited bulk email, ever.",
        )
    )
    await store.accept_terms(
        TermsAcceptance("acme", "2026-11", clock.now(), "web:abuse-desk@acme.example")
    )
    now = clock.now()
    case = Case(
        new_case_id(),
        "acme",
        "ann@example.net",
        "Q1",
        "Q1",
        "fbl",
        "abuse",
        b"",
        "open",
        now,
        now + 86400,
        now,
    )
    queued = await cases.send_notice(store, config, case, "opened", now=now)
    message = await store.queued_message(queued)
    text = message_from_bytes(message.content).get_payload(decode=True).decode()
    assert "Your account accepted the terms of use version 2026-11 on" in text
    assert "(web:abuse-desk@acme.example); they say:" in text
    assert "No unsolicited bulk email, ever." in text
