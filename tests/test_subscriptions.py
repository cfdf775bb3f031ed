"""Confirmed opt-in end to end: hosted forms, confirmation links, the CRM API, abuse limits."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from email import message_from_bytes, policy
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    TestUpstream,
    config_data,
    eventually,
    free_port,
    scrape,
    smtp_client,
)

from relay.config import parse_config
from relay.errors import ConfigError
from relay.mail.branding import LANGUAGES, form_strings, strings
from relay.passwords import hash_password
from relay.storage.records import Suppression

ACME = ("acme-crm", PASSWORD)
CHROMIUM = "/usr/bin/chromium"
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
LINK = re.compile(r"/c/([A-Za-z0-9_-]{20,})")
CONSENT_TEXT = "Send me the Acme Weekly newsletter. I can unsubscribe at any time."


def subscription_data(store_url, upstream: TestUpstream, tls_files, **subscriptions):
    port = free_port()
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["web"] = {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}
    acme = data["accounts"][0]
    acme["consent"] = "enforce"
    acme["api_key_hash"] = PASSWORD_HASH
    acme["brand"]["color"] = "#0b7a3e"
    acme["lists"] = [
        {
            "id": "newsletter",
            "name": "Acme Weekly",
            "consent_text": CONSENT_TEXT,
            "consent_version": "2026-11-v1",
        }
    ]
    data["subscriptions"] = subscriptions
    return data


@pytest.fixture
def data(store_url, upstream, tls_files):
    """Every test runs on SQLite and on the local PostgreSQL."""
    return subscription_data(store_url, upstream, tls_files)


def base(relay) -> str:
    return f"http://127.0.0.1:{relay.web_port}"


def confirmations(upstream: TestUpstream, address: str) -> list[str]:
    """The confirmation tokens mailed to `address`, oldest first."""
    tokens = []
    for captured in upstream.messages:
        if captured.rcpt == address:
            text = message_from_bytes(captured.content, policy=policy.default).get_body(("plain",))
            tokens += LINK.findall(text.get_content())
    return tokens


async def subscribe(http: aiohttp.ClientSession, relay, address: str, **extra: str):
    """Fill in the hosted form as a browser would: GET (for the CSRF token), then POST."""
    url = f"{base(relay)}/s/acme/newsletter"
    async with http.get(url) as page:
        token = FORM_TOKEN.search(await page.text()).group(1)
    fields = {"email": address, "consent": "yes", "form_token": token, "website": "", **extra}
    async with http.post(url, data=fields) as answer:
        return answer.status, await answer.text()


async def rcpt_code(relay, recipient: str) -> int:
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    await client.mail("news@acme.example")
    response = await client.execute_command(f"RCPT TO:<{recipient}>".encode())
    await client.quit()
    return response.code


# --- the browser ---


async def test_browser_subscribes_confirms_and_then_mail_passes(
    start_relay, data, upstream, tmp_path
):
    """Headless Chromium fills the form, follows the emailed link and confirms."""
    from playwright.async_api import async_playwright

    assert shutil.which(CHROMIUM), "Debian's chromium is needed (.ci/run installs it)"
    shots = Path(os.environ.get("OPTIN_RELAY_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    relay = await start_relay(data)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = await browser.new_page(viewport={"width": 800, "height": 700})
        await page.goto(f"{base(relay)}/s/acme/newsletter")
        await page.screenshot(path=shots / "1-subscribe-form.png", full_page=True)
        assert CONSENT_TEXT in await page.inner_text("form")
        await page.fill("#email", "Rita@Example.net")
        await page.check("#consent")
        await page.click("button[type=submit]")
        await page.wait_for_selector("text=Check your inbox")
        await page.screenshot(path=shots / "2-check-inbox.png", full_page=True)

        await eventually(lambda: bool(confirmations(upstream, "rita@example.net")))
        [token] = confirmations(upstream, "rita@example.net")
        await page.goto(f"{base(relay)}/c/{token}")
        await page.screenshot(path=shots / "3-confirm.png", full_page=True)
        assert await relay.store.consents(address="rita@example.net") == []  # GET changed nothing
        await page.click("button[type=submit]")
        await page.wait_for_selector("text=You are subscribed")
        await page.screenshot(path=shots / "4-subscribed.png", full_page=True)
        await browser.close()
    for name in ("1-subscribe-form", "2-check-inbox", "3-confirm", "4-subscribed"):
        assert (shots / f"{name}.png").stat().st_size > 1000

    [record] = await relay.store.consents(address="rita@example.net")
    assert (record.account_id, record.list_id, record.method) == ("acme", "newsletter", "confirmed")
    assert record.confirmed_at is not None
    assert record.subscribed_at is not None
    assert record.consent_text_version == "2026-11-v1"
    assert record.ip == "127.0.0.1"
    assert "HeadlessChrome" in record.user_agent
    evidence = json.loads(record.evidence)
    assert evidence["consent_text"] == CONSENT_TEXT
    assert evidence["confirm"]["ip"] == "127.0.0.1"
    assert "HeadlessChrome" in evidence["confirm"]["user_agent"]
    assert record.source == f"form:{base(relay)}/s/acme/newsletter"
    # With consent enforced, the confirmed address may be mailed; an unconfirmed one may not.
    assert await rcpt_code(relay, "rita@example.net") == 250
    assert await rcpt_code(relay, "stranger@example.net") == 550


# --- escaping ---


INJECTION = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


async def test_injected_markup_comes_back_escaped(start_relay, data, upstream):
    """Every form field and brand value is escaped on every page and in the email."""
    acme = data["accounts"][0]
    acme["brand"]["name"] = f"Acme {INJECTION}"
    acme["brand"]["postal_address"] = f"1 Way {INJECTION}"
    acme["brand"]["logo_url"] = f"https://cdn.acme.example/logo.png?{INJECTION}"
    acme["lists"][0]["name"] = f"Weekly {INJECTION}"
    acme["lists"][0]["consent_text"] = f"I agree {INJECTION}"
    acme["lists"][0]["consent_version"] = f"v1{INJECTION}"
    relay = await start_relay(data)
    url = f"{base(relay)}/s/acme/newsletter"
    pages = []
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Referer": f"https://x.example/{INJECTION}"}) as page:
            pages.append(await page.text())
        async with http.get(f"{url}/snippet") as snippet:
            pages.append(await snippet.text())
        # A snippet post (no CSRF token) and a bad address are echoed back into the form.
        async with http.post(url, data={"email": INJECTION, "source_url": INJECTION}) as echo:
            pages.append(await echo.text())
        token = FORM_TOKEN.search(pages[0]).group(1)
        bad = {"email": INJECTION, "consent": "yes", "form_token": token, "source_url": INJECTION}
        async with http.post(url, data=bad) as invalid:
            assert invalid.status == 400
            pages.append(await invalid.text())
        _, sent = await subscribe(http, relay, "ivy@example.net")
        pages.append(sent)
        await eventually(lambda: bool(confirmations(upstream, "ivy@example.net")))
        [link] = confirmations(upstream, "ivy@example.net")
        async with http.get(f"{base(relay)}/c/{link}") as confirm:
            pages.append(await confirm.text())
        async with http.post(f"{base(relay)}/c/{link}") as done:
            pages.append(await done.text())
    captured = next(m for m in upstream.messages if m.rcpt == "ivy@example.net")
    email = message_from_bytes(captured.content, policy=policy.default)
    pages.append(email.get_body(("html",)).get_content())
    # A colour is a colour: markup there is refused when the configuration loads.
    acme["brand"]["color"] = INJECTION
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.brand\.color"):
        parse_config(data)
    for text in pages:
        assert "<script>" not in text
        assert "<img src=x" not in text
        assert "&lt;script&gt;" in text or "&#34;&gt;&lt;script" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]


# --- confirmation links ---


async def test_get_confirms_nothing_and_expired_or_forged_links_fail(
    start_relay, data, upstream, clock
):
    """Link scanners may GET; only POST confirms, and only a live, genuine token."""
    relay = await start_relay(data)
    async with aiohttp.ClientSession() as http:
        await subscribe(http, relay, "sam@example.net")
        await subscribe(http, relay, "tom@example.net")
        await eventually(lambda: len(upstream.messages) == 2)
        [sam] = confirmations(upstream, "sam@example.net")
        [tom] = confirmations(upstream, "tom@example.net")
        for _ in range(3):
            async with http.get(f"{base(relay)}/c/{sam}") as page:
                assert page.status == 200
                assert "Confirm subscription" in await page.text()
        assert await relay.store.consents(address="sam@example.net") == []
        forged = sam[:-4] + ("AAAA" if sam[-4:] != "AAAA" else "BBBB")
        async with http.post(f"{base(relay)}/c/{forged}") as page:
            assert page.status == 400
        clock.advance(7 * 86400 + 1)  # subscriptions.pending_ttl
        async with http.get(f"{base(relay)}/c/{tom}") as page:
            assert page.status == 400
        async with http.post(f"{base(relay)}/c/{tom}") as page:
            assert page.status == 400
            assert "not valid" in await page.text()
    assert await relay.store.consents(address="tom@example.net") == []
    assert await relay.store.consents(address="sam@example.net") == []
    assert await rcpt_code(relay, "tom@example.net") == 550


# --- abuse limits and enumeration ---


async def test_limits_hold_and_answers_do_not_reveal_addresses(
    start_relay, store_url, upstream, tls_files
):
    """Per-IP limits answer 429; the per-address email cap holds; every answer is the same."""
    data = subscription_data(
        store_url,
        upstream,
        tls_files,
        subscribe_per_ip=7,
        confirm_per_ip=2,
        subscribe_per_address=5,
        emails_per_address=2,
    )
    relay = await start_relay(data)
    await relay.store.suppress(
        Suppression("cleo@example.net", "acme", "complaint", "fbl:abuse", 0), actor="test"
    )
    async with aiohttp.ClientSession() as http:
        answers = [await subscribe(http, relay, "nina@example.net") for _ in range(3)]
        answers.append(await subscribe(http, relay, "cleo@example.net"))  # complaint-suppressed
        answers.append(await subscribe(http, relay, "new@example.net"))
        await eventually(lambda: len(confirmations(upstream, "new@example.net")) == 1)
        [token] = confirmations(upstream, "new@example.net")
        async with http.post(f"{base(relay)}/c/{token}") as done:
            assert done.status == 200
        answers.append(await subscribe(http, relay, "new@example.net"))  # already confirmed
        assert len(set(answers)) == 1  # one status, one body for all
        assert answers[0][0] == 200
        # The cap: two confirmation emails a day for one address, whatever is asked.
        await eventually(lambda: len(confirmations(upstream, "nina@example.net")) == 2)
        assert len(await relay.store.subscriptions_of("acme", "nina@example.net")) == 2
        assert confirmations(upstream, "cleo@example.net") == []
        assert len(confirmations(upstream, "new@example.net")) == 1
        # Six subscribe posts so far; the seventh passes, the eighth is over the IP limit.
        assert (await subscribe(http, relay, "oli@example.net"))[0] == 200
        status, page = await subscribe(http, relay, "pia@example.net")
        assert status == 429
        assert "Too many requests" in page
        # Confirmations per IP: one done above, one more, then 429 (even for a good token).
        async with http.post(f"{base(relay)}/c/not-a-token-at-all-000000") as page:
            assert page.status == 400
        await eventually(lambda: bool(confirmations(upstream, "oli@example.net")))
        [oli] = confirmations(upstream, "oli@example.net")
        async with http.post(f"{base(relay)}/c/{oli}") as page:
            assert page.status == 429
    assert await relay.store.consents(address="oli@example.net") == []


async def test_csrf_and_honeypot(start_relay, data, upstream):
    """Without a valid form token the form comes back filled in; a filled honeypot mails no one."""
    relay = await start_relay(data)
    url = f"{base(relay)}/s/acme/newsletter"
    async with aiohttp.ClientSession() as http:
        snippet_post = {"email": "una@example.net", "consent": "yes"}
        async with http.post(url, data=snippet_post) as page:
            text = await page.text()
            assert page.status == 200
            assert 'value="una@example.net"' in text
            assert FORM_TOKEN.search(text)
        other = {**snippet_post, "form_token": "1800000000.bm90LWEtbWFj"}
        async with http.post(url, data=other) as page:
            assert "Please check your address" in await page.text()
        status, honeypot = await subscribe(http, relay, "vic@example.net", website="http://spam")
        status_ok, sent = await subscribe(http, relay, "una@example.net")
        assert (status, honeypot) == (status_ok, sent)  # the bot cannot tell
        async with http.get(f"{url}/snippet") as snippet:
            assert f'action="{url}"' in await snippet.text()
        async with http.get(f"{base(relay)}/s/acme/no-such-list") as missing:
            assert missing.status == 404
    await eventually(lambda: bool(confirmations(upstream, "una@example.net")))
    assert confirmations(upstream, "vic@example.net") == []
    assert len([m for m in upstream.messages if m.rcpt == "una@example.net"]) == 1


async def test_metrics_count_subscription_steps(start_relay, data, upstream):
    """/metrics counts subscribe and confirm steps by outcome."""
    relay = await start_relay(data)
    before = await scrape(relay.web_port)
    async with aiohttp.ClientSession() as http:
        await subscribe(http, relay, "xia@example.net")
        await subscribe(http, relay, "bot@example.net", website="http://spam")
        await eventually(lambda: bool(confirmations(upstream, "xia@example.net")))
        for token in (confirmations(upstream, "xia@example.net")[0], "forged" * 8):
            async with http.post(f"{base(relay)}/c/{token}") as answer:
                assert answer.status in (200, 400)
    after = await scrape(relay.web_port)
    steps = [
        ("subscribe", "requested"),
        ("subscribe", "dropped"),
        ("confirm", "confirmed"),
        ("confirm", "invalid"),
    ]
    deltas = []
    for step, outcome in steps:
        key = ("optin_relay_subscriptions_total", (("outcome", outcome), ("step", step)))
        deltas.append(after.get(key, 0) - before.get(key, 0))
    assert deltas == [1, 1, 1, 1]


async def test_broken_bodies_get_400_never_a_crash(start_relay, data, upstream, log_lines):
    """Bodies that are not forms or JSON, or name an unknown charset, get a clear 400."""
    relay = await start_relay(data)
    url = f"{base(relay)}/s/acme/newsletter"
    api = f"{base(relay)}/api/v1/subscriptions"
    auth = {"Authorization": f"Bearer acme:{PASSWORD}"}
    form = "application/x-www-form-urlencoded"
    async with aiohttp.ClientSession() as http:
        for content_type, body in (
            ("multipart/form-data; boundary=ABC", b"no boundary here"),
            (f"{form}; charset=x-no-such", b"email=zed%40example.net&consent=yes"),
            ("multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="e'),
        ):
            async with http.post(url, data=body, headers={"Content-Type": content_type}) as page:
                assert page.status == 400
                assert FORM_TOKEN.search(await page.text())  # a fresh form to fill in
        for content_type, body in (
            ("application/json; charset=x-no-such", b'{"address": "zed@example.net"}'),
            ("application/json", b'{"address": "\xff"}'),
        ):
            headers = {**auth, "Content-Type": content_type}
            async with http.post(api, data=body, headers=headers) as answer:
                assert (answer.status, (await answer.json())["error"]) == (400, "invalid_json")
    assert confirmations(upstream, "zed@example.net") == []
    assert not [e for e in log_lines() if e["level"] == "error"]


# --- re-subscription and withdrawal ---


async def test_unsubscribed_address_comes_back_only_through_the_flow(start_relay, data, upstream):
    """An unsubscribe withdraws the record; re-subscribing lifts it; a complaint stays."""
    relay = await start_relay(data)
    store = relay.store
    async with aiohttp.ClientSession() as http:
        await subscribe(http, relay, "wes@example.net")
        await eventually(lambda: bool(confirmations(upstream, "wes@example.net")))
        async with http.post(f"{base(relay)}/c/{confirmations(upstream, 'wes@example.net')[0]}"):
            pass
        # A message, then a one-click unsubscribe from its List-Unsubscribe link.
        client = await smtp_client(relay.smtp_ports[0], login=ACME)
        message = (
            b"From: Acme <news@acme.example>\r\nTo: wes@example.net\r\nSubject: Weekly\r\n"
            b"Message-ID: <w1@acme.example>\r\n\r\nHello\r\n"
        )
        await client.sendmail("news@acme.example", ["wes@example.net"], message)
        await client.quit()
        await eventually(lambda: any(b"Subject: Weekly" in m.content for m in upstream.messages))
        relayed = next(m for m in upstream.messages if b"Subject: Weekly" in m.content)
        link = re.search(rb"<(http://127\.0\.0\.1:\d+/u/[A-Za-z0-9_-]+)>", relayed.content)
        async with http.post(link.group(1).decode(), data={"List-Unsubscribe": "One-Click"}):
            pass
        assert (await store.suppressed("wes@example.net", "acme")).reason == "unsubscribe"
        [withdrawn] = await store.consents(address="wes@example.net")
        assert withdrawn.withdrawn_at is not None
        assert withdrawn.withdrawn_how == "one_click"
        assert await rcpt_code(relay, "wes@example.net") == 550

        await subscribe(http, relay, "wes@example.net")
        await eventually(lambda: len(confirmations(upstream, "wes@example.net")) == 2)
        async with http.post(f"{base(relay)}/c/{confirmations(upstream, 'wes@example.net')[1]}"):
            pass
    assert await store.suppressed("wes@example.net", "acme") is None
    assert [a.reason for a in await store.audit("wes@example.net")][-1] == (
        "resubscribed through the confirmed opt-in form"
    )
    [current] = await store.consents(address="wes@example.net")
    assert current.withdrawn_at is None
    [earlier] = await store.consent_history("acme", "wes@example.net")
    assert earlier.withdrawn_how == "one_click"  # the history is kept
    assert await rcpt_code(relay, "wes@example.net") == 250

    # A complaint suppression is not lifted by a form: no email, no record, still refused.
    await store.suppress(
        Suppression("xia@example.net", "acme", "complaint", "fbl:abuse", 0), actor="test"
    )
    async with aiohttp.ClientSession() as http:
        status, _ = await subscribe(http, relay, "xia@example.net")
    assert status == 200
    assert confirmations(upstream, "xia@example.net") == []
    assert (await store.suppressed("xia@example.net", "acme")).reason == "complaint"
    assert await rcpt_code(relay, "xia@example.net") == 550


# --- the API ---


async def test_api_key_rotation(start_relay, data):
    """With api_key_hash a list both keys work; after a reload without the old one it fails."""
    new_key = "rotated-api-key-0123456789"
    new_hash = hash_password(new_key)
    data["accounts"][0]["api_key_hash"] = [new_hash, PASSWORD_HASH]
    relay = await start_relay(data)
    url = f"{base(relay)}/api/v1/subscriptions/nobody@example.net"

    async def status(secret: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers={"Authorization": f"Bearer acme:{secret}"}) as r,
        ):
            return r.status

    assert [await status(PASSWORD), await status(new_key)] == [404, 404]  # both let in
    rotated = dict(data["accounts"][0], api_key_hash=new_hash)
    relay.reload(parse_config({**data, "accounts": [rotated]}))
    assert [await status(PASSWORD), await status(new_key)] == [401, 404]  # the cached one too


async def test_api_starts_double_opt_in_and_returns_the_record(start_relay, data, upstream):
    """POST /api/v1/subscriptions with the account's key; GET returns the record; JSON errors."""
    relay = await start_relay(data)
    api = f"{base(relay)}/api/v1/subscriptions"
    good = {"Authorization": f"Bearer acme:{PASSWORD}"}
    body = {
        "address": "yan@example.net",
        "list": "newsletter",
        "ip": "198.51.100.7",
        "user_agent": "Mozilla/5.0 (CRM signup page)",
        "source_url": "https://acme.example/join",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(api, json=body, headers={"Authorization": "Bearer acme:wrong"}) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "unauthorized"
        async with http.post(
            api, json=body, headers={"Authorization": f"Bearer globex:{PASSWORD}"}
        ) as r:
            assert r.status == 401
        async with http.post(api, data=b"{not json", headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (400, "invalid_json")
        async with http.post(api, json={**body, "list": "other"}, headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (404, "unknown_list")
        async with http.post(api, json={**body, "address": "not an address"}, headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (422, "invalid_address")
        async with http.post(api, json={**body, "extra": 1}, headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (400, "invalid_request")
        async with http.get(f"{api}/nobody@example.net", headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (404, "not_found")
        async with http.post(api, json=body, headers=good) as r:
            assert r.status == 202
            assert await r.json() == {"status": "pending_confirmation"}
        async with http.get(f"{api}/yan@example.net", headers=good) as r:
            shown = await r.json()
        assert shown["records"] == []
        assert [s["status"] for s in shown["subscriptions"]] == ["pending"]
        await eventually(lambda: bool(confirmations(upstream, "yan@example.net")))
        async with http.post(
            f"{base(relay)}/c/{confirmations(upstream, 'yan@example.net')[0]}",
            headers={"User-Agent": "Mail client link"},
        ):
            pass
        async with http.get(f"{api}/yan@example.net", headers=good) as r:
            shown = await r.json()
    [record] = shown["records"]
    assert record["method"] == "confirmed"
    assert record["ip"] == "198.51.100.7"
    assert record["source"] == "form:https://acme.example/join"
    assert record["confirmed_at"] >= record["subscribed_at"]
    evidence = json.loads(record["evidence"])
    assert evidence["subscribe"]["user_agent"] == "Mozilla/5.0 (CRM signup page)"
    assert evidence["confirm"]["user_agent"] == "Mail client link"
    assert shown["subscriptions"][0]["status"] == "confirmed"


async def test_client_address_behind_a_trusted_proxy(start_relay, data, upstream):
    """X-Forwarded-For names the subscriber only when the peer is a configured proxy."""
    data["web"]["trusted_proxies"] = ["127.0.0.1/32"]
    relay = await start_relay(data)
    async with aiohttp.ClientSession(
        headers={"X-Forwarded-For": "192.0.2.50, 203.0.113.9"}
    ) as http:
        await subscribe(http, relay, "zed@example.net")
    [pending] = await relay.store.subscriptions_of("acme", "zed@example.net")
    assert pending.ip == "203.0.113.9"  # the hop the proxy saw, not what the client claimed
    data["web"]["trusted_proxies"] = []
    data["web"]["listen"] = "127.0.0.1:0"  # an ephemeral port: a chosen one may be taken meanwhile
    other = await start_relay(data)
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": "203.0.113.9"}) as http:
        await subscribe(http, other, "amy@example.net")
    [direct] = await other.store.subscriptions_of("acme", "amy@example.net")
    assert direct.ip == "127.0.0.1"


async def test_form_speaks_the_brand_language(start_relay, data):
    """The page's texts follow brand.language (German here), the brand's own words stay."""
    data["accounts"][1]["lists"] = [
        {"id": "news", "name": "Globex Brief", "consent_text": "Ja, bitte.", "consent_version": "1"}
    ]
    relay = await start_relay(data)
    async with aiohttp.ClientSession() as http, http.get(f"{base(relay)}/s/globex/news") as page:
        text = await page.text()
    assert '<html lang="de">' in text
    assert "Globex Brief abonnieren" in text
    assert "Ja, bitte." in text


def test_every_language_offered_is_complete():
    """Each language a brand may choose has every page, form and email text, same placeholders."""

    def placeholders(text: str) -> set[str]:
        return {field for _, field, _, _ in string.Formatter().parse(text) if field}

    assert set(LANGUAGES) == {"en", "de", "fr", "es"}
    for table in (strings, form_strings):
        english = table("en")
        for language in LANGUAGES:
            texts = table(language)
            assert texts.keys() == english.keys(), language
            for key, text in texts.items():
                assert placeholders(text) == placeholders(english[key]), (language, key)
            if language != "en":
                assert texts["confirm_title"] != english["confirm_title"], language
    assert form_strings("fr-CA") == form_strings("fr")
    assert form_strings("it") == form_strings("en")


async def test_terminated_account_takes_no_subscriptions(start_relay, data, upstream, clock):
    """Termination closes the account's forms (404) and its API (403 account_closed)."""
    relay = await start_relay(data)
    await relay.store.set_account_state(
        "acme", "terminated", reason="test", actor="test", now=clock.now()
    )
    body = {"address": "ned@example.net", "list": "newsletter"}
    good = {"Authorization": f"Bearer acme:{PASSWORD}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base(relay)}/s/acme/newsletter") as page:
            assert page.status == 404
        async with http.post(f"{base(relay)}/api/v1/subscriptions", json=body, headers=good) as r:
            assert (r.status, (await r.json())["error"]) == (403, "account_closed")
    assert confirmations(upstream, "ned@example.net") == []
