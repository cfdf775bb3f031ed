"""Complaints and bounces end to end: intake (SMTP, CLI, HTTP), attribution, suppression, cases."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from subprocess import PIPE

import aiohttp
import aiosmtplib
import dkim
import pytest
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    TestUpstream,
    config_data,
    dkim_dns,
    eventually,
    read_events,
    scrape,
    simple_message,
    smtp_client,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reports import ACME, INBOUND, arf, inbound, listeners

from relay.clock import ManualClock
from relay.config import Config, parse_config
from relay.feedback import cases
from relay.feedback.intake import Feedback
from relay.feedback.reports import bounce_class, read_complaint, read_dsn
from relay.runtime import make_codec
from relay.storage import NewMessage, open_store
from relay.storage.records import Case, Consent, Suppression, new_case_id, new_message_id
from relay.tokens import TokenCodec

FIXTURES = Path(__file__).parent / "fixtures"
CLI = [sys.executable, "-m", "relay"]
FIXTURE_ACCOUNT = {
    "id": "fixtures",
    "username": "fixtures",
    "password_hash": PASSWORD_HASH,
    "from_domains": ["example.com", "example.net", "example.jp"],
    "contact": "desk@example.com",
    "brand": {"name": "Fixture Sender", "postal_address": "3 Example Street"},
}

# What each real-world report does (STANDARDS 18-23): open a case against the account owning
# the reported From domain (for its recipient), suppress, count, or nothing at all.
ARF_OUTCOMES: dict[str, tuple[str, str | None]] = {
    "sisimai-arf-02.eml": ("case", "this-local-part-does-not-exist-on-yahoo@yahoo.com"),
    "sisimai-arf-12.eml": ("ignore", None),  # opt-out, but the recipient is undisclosed
    "sisimai-arf-14.eml": ("case", "kijitora@y.example.com"),
    "sisimai-arf-15.eml": ("ignore", None),  # abuse, recipient undisclosed and not enclosed
    "sisimai-arf-19.eml": ("ignore", None),  # auth-failure: no complaint
    "sisimai-arf-22.eml": ("case", "kijitora@example.com"),  # multipart/mixed forward
    "sisimai-arf-24.eml": ("ignore", None),  # From domain of no account
    "sisimai-arf-26.eml": ("ignore", None),  # an auto-reply
    "stalwart-001.eml": ("ignore", None),  # abuse, recipient undisclosed
    "stalwart-002.eml": ("case", "user@example.com"),
    "stalwart-003.eml": ("ignore", None),  # auth-failure
    "stalwart-004.eml": ("ignore", None),  # auth-failure, text/rfc822-headers
    "stalwart-005.eml": ("ignore", None),  # auth-failure
}
DSN_OUTCOMES: dict[str, str] = {
    "mimekit-delivery-status-no-blank-line.txt": "count",  # failed without a status code
    "sisimai-dos-rfc3464-01.eml": "suppress",  # 5.1.1, CRLF
    "sisimai-lhost-office365-04.eml": "suppress",  # 5.1.351
    "sisimai-lhost-postfix-02.eml": "suppress",  # 5.2.1 and 5.1.1
    "sisimai-lhost-postfix-05.eml": "count",  # failed with 4.1.1: never suppress on 4.x.x
    "sisimai-rfc3464-01.eml": "suppress",
    "sisimai-rfc3464-03.eml": "suppress",  # 5.0.0
    "sisimai-rfc3464-07.eml": "count",  # delayed
    "sisimai-rfc3464-28.eml": "ignore",  # deliverable
    "sisimai-rfc3464-55.eml": "count",  # delayed
}


@pytest.fixture
def data(sqlite_url, upstream: TestUpstream, tls_files):
    return config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        listeners=listeners(),
    )


async def send(relay, recipients, *, message: bytes | None = None) -> None:
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    await client.sendmail("news@acme.example", recipients, message or simple_message())
    await client.quit()


def redact(content: bytes, keep: str) -> bytes:
    """The relayed copy as a redacting provider encloses it (RFC 6590), one marker left."""
    header, body = content.split(b"\r\n\r\n", 1)
    lines = re.split(rb"\r\n(?![ \t])", header)
    kept = []
    for line in lines:
        name = line.split(b":", 1)[0].lower()
        if name == b"to":
            kept.append(b"To: redacted@isp.example")
            continue
        if name == b"x-optin-trace" and keep != "trace":
            continue
        if name in (b"list-unsubscribe", b"list-unsubscribe-post") and keep not in (
            "unsubscribe",
            "mailto",
        ):
            continue
        if name == b"received" and keep != "queue_id":
            continue
        if name == b"list-unsubscribe" and keep == "mailto":  # only the mailto address left
            kept.append(re.sub(rb"<https://[^>]+>,\s*", b"", line))
            continue
        kept.append(line)
    body = re.sub(rb"https://relay\.test\.example/u/[A-Za-z0-9_-]+", b"[link]", body)
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


# --- the fixture table ---


async def test_every_fixture_report_gives_its_outcome(start_relay, data, upstream):
    """Each real ARF report and DSN mailed to fbl@ / bounce+TOKEN@ has its expected effect."""
    data["accounts"].append(FIXTURE_ACCOUNT)
    data["feedback"] = {"attribute_by_from_domain": True}
    relay = await start_relay(data)
    store = relay.store

    for name, (outcome, recipient) in ARF_OUTCOMES.items():
        before = (await store.cases(), await store.suppressions())
        code, _ = await inbound(relay, f"fbl@{INBOUND}", (FIXTURES / "arf" / name).read_bytes())
        assert code == 250, name  # unknown types and non-complaints are accepted (RFC 6650)
        found, suppressions = await store.cases(), await store.suppressions()
        if outcome == "case":
            assert len(found) == len(before[0]) + 1, name
            assert (found[0].account_id, found[0].recipient) == ("fixtures", recipient), name
            suppressed = await store.suppressed(recipient, "fixtures")
            assert getattr(suppressed, "reason", None) == "complaint", name
        else:
            assert (found, suppressions) == before, name
    opened = [c.recipient for c in await store.cases(account_id="fixtures")]
    assert sorted(opened) == sorted(r for o, r in ARF_OUTCOMES.values() if o == "case")

    # Each DSN comes back for a message the relay sent to its first Final-Recipient.
    targets = {}
    for name in DSN_OUTCOMES:
        entries = re.findall(
            rb"Final-Recipient:\s*rfc822;\s*(\S+)",
            (FIXTURES / "dsn" / name).read_bytes(),
            re.IGNORECASE,
        )
        targets[name] = entries[0].decode().lower()
    await send(relay, sorted(set(targets.values())))
    relayed = lambda: {m.rcpt.lower(): m.mail_from for m in upstream.messages}  # noqa: E731
    await eventually(lambda: set(targets.values()) <= set(relayed()))
    bounce_address = relayed()
    # The notices of the cases opened above went out too.
    await eventually(lambda: sum(m.rcpt == "desk@example.com" for m in upstream.messages) == 4)
    for name, outcome in DSN_OUTCOMES.items():
        recipient = targets[name]
        before = (await store.stats(since=0, account_id="acme")).get("acme", {})
        code, _ = await inbound(
            relay, bounce_address[recipient], (FIXTURES / "dsn" / name).read_bytes()
        )
        assert code == 250, name
        after = (await store.stats(since=0, account_id="acme")).get("acme", {})
        suppressed = await store.suppressed(recipient, "acme")
        if outcome == "suppress":
            assert getattr(suppressed, "reason", None) == "bounce", name
            assert after.get("bounce", 0) == before.get("bounce", 0) + 1, name
        else:
            assert suppressed is None, name
            counted = after.get("soft_bounce", 0) - before.get("soft_bounce", 0)
            assert counted == (1 if outcome == "count" else 0), name


def test_stalwart_reports_parse_as_their_reference_says():
    """Feedback type, user agent, version and recipient match stalwart's parsed expectation."""
    for path in sorted((FIXTURES / "arf").glob("stalwart-*.eml")):
        expected = json.loads(path.with_suffix(".json").read_text())
        report = read_complaint(path.read_bytes())
        assert report.feedback_type == expected["feedback_type"].lower().replace(
            "authfailure", "auth-failure"
        ), path
        assert report.fields["User-Agent"] == expected["user_agent"], path
        assert int(report.fields["Version"]) == expected["version"], path
        rcpt = expected["original_rcpt_to"]
        assert report.original_rcpt_to == ((rcpt.strip("<>"),) if rcpt else ()), path


# --- attribution of reports about mail the relay sent ---


@pytest.mark.parametrize("marker", ["trace", "unsubscribe", "mailto", "queue_id"])
async def test_redacted_report_is_attributed_to_recipient_and_account(
    start_relay, data, upstream, marker
):
    """With the recipient redacted, what the relay put in the copy still names them."""
    relay = await start_relay(data)
    await send(relay, ["alice@example.net", "bob@example.net"])
    await eventually(lambda: len(upstream.messages) == 2)
    bob = next(m for m in upstream.messages if m.rcpt == "bob@example.net")
    enclosed = redact(bob.content, marker)
    assert b"bob@example.net" not in enclosed
    # The queue id names the message; the provider's Original-Rcpt-To picks the recipient.
    report = arf(enclosed, rcpt_to="bob@example.net" if marker == "queue_id" else None)
    code, _ = await inbound(relay, f"fbl@{INBOUND}", report)
    assert code == 250
    [case] = await relay.store.cases()
    assert (case.account_id, case.recipient) == ("acme", "bob@example.net")
    assert case.status == "awaiting_proof"
    if marker != "unsubscribe":  # the self-contained https token names no message
        assert case.message_id is not None
    assert (await relay.store.suppressed("bob@example.net", "acme")).reason == "complaint"
    assert await relay.store.suppressed("alice@example.net", "acme") is None


async def test_report_without_markers_is_not_attributed_from_smtp(start_relay, data, log_lines):
    """Anyone can mail fbl@: a From domain alone does not open a case unless configured."""
    data["accounts"].append(FIXTURE_ACCOUNT)
    relay = await start_relay(data)
    code, _ = await inbound(
        relay, f"fbl@{INBOUND}", (FIXTURES / "arf/stalwart-002.eml").read_bytes()
    )
    assert code == 250
    assert await relay.store.cases() == []
    assert await relay.store.suppressed("user@example.com", "fixtures") is None
    [event] = [e for e in log_lines() if e["event"] == "complaint_unattributed"]
    assert event["cause"] == "not attributable"


async def test_forwarded_spam_to_abuse_is_a_complaint(start_relay, data, upstream):
    """A relayed message forwarded as an attachment to abuse@ opens a case."""
    relay = await start_relay(data)
    await send(relay, ["carol@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    forward = EmailMessage()
    forward["From"] = "carol@example.net"
    forward["To"] = f"abuse@{INBOUND}"
    forward["Subject"] = "Fwd: spam"
    forward.set_content("I never signed up for this.\n")
    forward.add_attachment(message_from_bytes(upstream.messages[0].content))
    code, _ = await inbound(relay, f"abuse@{INBOUND}", forward.as_bytes())
    assert code == 250
    [case] = await relay.store.cases()
    assert (case.recipient, case.source, case.feedback_type) == (
        "carol@example.net",
        "abuse",
        "abuse",
    )


async def test_malformed_and_non_complaints_change_nothing(start_relay, data, upstream, log_lines):
    """A report missing required fields is refused with its cause; auto-replies are accepted."""
    relay = await start_relay(data)
    await send(relay, ["dave@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    broken = arf(upstream.messages[0].content).replace(b"User-Agent: ISP-FBL/1.0\r\n", b"")
    code, message = await inbound(relay, f"fbl@{INBOUND}", broken)
    assert code == 550
    assert "5.6.0" in message
    assert "User-Agent" in message
    auto = (
        b"From: dave@example.net\r\nTo: fbl@relay.test.example\r\nSubject: Out of office\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\nI am away.\r\n"
    )
    assert (await inbound(relay, f"fbl@{INBOUND}", auto))[0] == 250
    not_spam = arf(upstream.messages[0].content, feedback_type="not-spam")
    assert (await inbound(relay, f"fbl@{INBOUND}", not_spam))[0] == 250
    assert await relay.store.cases() == []
    assert await relay.store.suppressed("dave@example.net", "acme") is None
    events = [e["event"] for e in log_lines()]
    assert "complaint_malformed" in events
    assert events.count("complaint_ignored") == 2


async def test_forged_bounce_address_is_refused_at_rcpt(start_relay, data, upstream):
    """bounce+TOKEN@ only for tokens the relay issued."""
    relay = await start_relay(data)
    await send(relay, ["erin@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    local = upstream.messages[0].mail_from.split("@")[0]
    forged = local[:-3] + ("aaa" if local[-3:] != "aaa" else "bbb")
    client = await smtp_client(relay.smtp_ports[1], starttls=False)
    await client.mail("")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await client.rcpt(f"{forged}@{INBOUND}")
    assert refused.value.code == 550
    await client.quit()


# --- a case end to end ---


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, "--config", str(config), check=False)
    assert not check or result.returncode == 0, result.stderr
    return result


async def acli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI while a relay runs on this event loop (which must not block meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, "--config", str(config), stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    result = subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())
    assert not check or result.returncode == 0, result.stderr
    return result


async def test_case_end_to_end(start_relay, data, upstream, tmp_path):
    """Complaint in, suppression, signed notice out, appeal, resolution and the fine."""
    relay = await start_relay(data)
    config: Config = relay.config
    await send(relay, ["frank@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    code, _ = await inbound(relay, f"fbl@{INBOUND}", arf(upstream.messages[0].content))
    assert code == 250
    [case] = await relay.store.cases()
    assert case.status == "awaiting_proof"
    assert case.deadline == case.opened_at + 7 * 86400

    # The recipient is refused from now on.
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    await client.mail("news@acme.example")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await client.rcpt("frank@example.net")
    assert refused.value.code == 550
    await client.quit()

    # The account's contact is told, by mail through the relay, signed for the relay's domain.
    await eventually(lambda: any(m.rcpt == "abuse-desk@acme.example" for m in upstream.messages))
    notice = next(m for m in upstream.messages if m.rcpt == "abuse-desk@acme.example")
    parsed = notice.message
    assert parsed["From"].endswith(f"<abuse@{INBOUND}>")
    assert case.id in parsed["Subject"]
    text = parsed.get_payload(decode=True).decode()
    assert "frank@example.net" in text
    assert "opt-in record" in text
    signature = dkim.DKIM(notice.content)
    assert b"d=relay.test.example" in notice.content.split(b"\r\n\r\n")[0]
    assert signature.verify(dnsfunc=dkim_dns(config))

    # The account appeals with its evidence; the operator upholds; the fine is recorded.
    path = write_config(tmp_path, data)
    evidence = tmp_path / "proof.txt"
    evidence.write_text("Signed up at the fair, paper form 2026-03-01.\n")
    await acli(path, "cases", "appeal", case.id, "--evidence", str(evidence))
    appealed = await relay.store.case(case.id)
    assert appealed.appealed_at is not None
    assert "paper form" in appealed.evidence
    listed = (await acli(path, "cases", "list", "--status", "awaiting_proof")).stdout
    assert case.id in listed
    await acli(
        path, "cases", "resolve", case.id, "--uphold", "--reason", "a paper form is no opt-in"
    )
    resolved = await relay.store.case(case.id)
    assert resolved.status == "upheld"
    assert resolved.fine_cents == 10000
    shown = (await acli(path, "cases", "show", case.id)).stdout
    assert "fine=100.00" in shown
    assert "appeal" in shown
    assert "uphold" in shown
    again = await acli(path, "cases", "resolve", case.id, "--dismiss", "--reason", "x", check=False)
    assert again.returncode == 1
    assert "upheld" in again.stderr


def opt_in(address: str, confirmed_at: float, **details: str) -> Consent:
    """A confirmed opt-in record of acme's, from its form, confirmed at `confirmed_at`."""
    return Consent(
        "acme",
        address,
        "newsletter",
        "confirmed",
        subscribed_at=confirmed_at - 200,
        confirmed_at=confirmed_at,
        source="form:https://acme.example/subscribe",
        **details,
    )


async def test_metrics_follow_intake_cases_and_the_backlog(
    start_relay, data, upstream, clock, log_lines
):
    """/metrics counts reports by outcome and closed cases, and shows what waits in the spool."""
    relay = await start_relay(data)
    reports = "optin_relay_feedback_reports_total"
    complaints = (reports, (("kind", "complaint"), ("outcome", "case")))
    on_record = (reports, (("kind", "complaint"), ("outcome", "dismissed")))
    ignored = (reports, (("kind", "complaint"), ("outcome", "ignore")))
    dismissed = ("optin_relay_cases_total", (("event", "dismissed"),))
    pending = ("optin_relay_spool_pending_recipients", ())
    age = ("optin_relay_spool_oldest_pending_age_seconds", ())
    before = await scrape(relay.web_port)
    assert (before[pending], before[age]) == (0, 0)

    await relay.store.record_consents([opt_in("gina@example.net", clock.now() - 500)])
    clock.advance(60)
    await send(relay, ["frank@example.net", "gina@example.net"])
    await eventually(lambda: len(upstream.messages) == 2)
    for captured in upstream.messages[:2]:
        code, _ = await inbound(relay, f"fbl@{INBOUND}", arf(captured.content))
        assert code == 250
    code, _ = await inbound(
        relay, f"fbl@{INBOUND}", arf(upstream.messages[0].content, feedback_type="not-spam")
    )
    assert code == 250
    notices = lambda: [m for m in upstream.messages if m.rcpt == "abuse-desk@acme.example"]  # noqa: E731
    await eventually(lambda: len(notices()) == 2)  # one asks for proof, one says it was dismissed

    upstream.reject["stuck@example.net"] = "451 4.3.0 Try again later"
    await send(relay, ["stuck@example.net"])
    await eventually(lambda: any(e["event"] == "delivery_deferred" for e in log_lines()))
    clock.advance(45)
    after = await scrape(relay.web_port)
    delta = lambda key: after.get(key, 0) - before.get(key, 0)  # noqa: E731
    assert [delta(complaints), delta(on_record), delta(ignored), delta(dismissed)] == [1, 1, 1, 1]
    assert (after[pending], after[age]) == (1, 45)


async def test_complaint_with_confirmed_opt_in_is_dismissed_with_proof(
    start_relay, data, upstream, clock
):
    """The consent store holds a confirmed record: the case is dismissed and the proof attached."""
    relay = await start_relay(data)
    now = clock.now()
    await relay.store.record_consents(
        [
            opt_in(
                "gina@example.net",
                now - 7000,
                ip="192.0.2.7",
                user_agent="Mozilla/5.0",
                consent_text_version="v3",
            )
        ]
    )
    await send(relay, ["gina@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    code, _ = await inbound(relay, f"fbl@{INBOUND}", arf(upstream.messages[0].content))
    assert code == 250
    [case] = await relay.store.cases()
    assert case.status == "dismissed"
    assert "confirmed opt-in record" in case.proof
    assert "192.0.2.7" in case.proof
    assert case.fine_cents == 0
    # Dismissed or not, a complaint is an unsubscribe (RFC 6449 section 4.3.1).
    assert (await relay.store.suppressed("gina@example.net", "acme")).reason == "complaint"
    [record] = await relay.store.consents(address="gina@example.net")
    assert record.withdrawn_how == "complaint"  # kept, marked withdrawn
    assert record.withdrawn_at is not None
    await eventually(lambda: any(m.rcpt == "abuse-desk@acme.example" for m in upstream.messages))
    notice = next(m for m in upstream.messages if m.rcpt == "abuse-desk@acme.example")
    assert "dismissed" in notice.message["Subject"]


# --- intake by CLI and HTTP ---


async def test_complaints_ingest_and_stats_cli(tmp_path, sqlite_url, tls_files):
    """`complaints ingest` acts like fbl@ (from-domain attribution allowed); `stats` counts it."""
    data = config_data(store_url=sqlite_url, upstream_port=25, tls_files=tls_files)
    data["accounts"].append(FIXTURE_ACCOUNT)
    path = write_config(tmp_path, data)
    broken = tmp_path / "broken.eml"
    broken.write_bytes(
        (FIXTURES / "arf/stalwart-002.eml").read_bytes().replace(b"User-Agent:", b"X-Agent:")
    )
    result = cli(
        path,
        "complaints",
        "ingest",
        str(FIXTURES / "arf/stalwart-002.eml"),
        str(FIXTURES / "arf/stalwart-003.eml"),
        str(broken),
        check=False,
    )
    assert result.returncode == 1  # one report was malformed
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[1] for row in rows] == ["case", "ignore", "malformed"]
    assert rows[0][3:5] == ["fixtures", "user@example.com"]
    again = cli(path, "complaints", "ingest", str(FIXTURES / "arf/stalwart-002.eml"))
    assert again.stdout.split("\t")[1] == "duplicate"
    stats = [json.loads(line) for line in cli(path, "stats", "--json").stdout.splitlines()]
    fixtures = next(s for s in stats if s["account"] == "fixtures")
    assert fixtures["complaint"] == 1
    assert fixtures["complaint_rate"] is None  # nothing delivered yet
    assert (
        cli(path, "stats", "--account", "fixtures")
        .stdout.splitlines()[1]
        .startswith("fixtures\t0\t0\t0\t1\t0\t0")
    )


async def test_admin_endpoint_takes_reports_with_a_token(start_relay, data):
    """POST /admin/v1/complaints needs the bearer token whose hash is configured."""
    data["accounts"].append(FIXTURE_ACCOUNT)
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/admin/v1/complaints"
    report = (FIXTURES / "arf/stalwart-002.eml").read_bytes()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=report, headers={"Authorization": f"Bearer {PASSWORD}"}) as r,
    ):
        assert r.status == 404  # no admin_token_hash: the endpoint does not exist
    data["web"]["admin_token_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/admin/v1/complaints"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=report, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "unauthorized"
        headers = {"Authorization": f"Bearer {PASSWORD}"}
        async with http.post(url, data=report, headers=headers) as r:
            assert r.status == 200
            body = await r.json()
        assert (body["outcome"], body["account_id"], body["recipient"]) == (
            "case",
            "fixtures",
            "user@example.com",
        )
        broken = report.replace(b"Version: 1", b"X-Version: 1")
        async with http.post(url, data=broken, headers=headers) as r:
            assert r.status == 422
            assert (await r.json())["error"] == "malformed_report"
        too_large = io.BytesIO(b"x" * (relay.config.smtp.max_message_size + 1))
        async with http.post(url, data=too_large, headers=headers) as r:
            assert r.status == 413
    assert (await relay.store.case(body["case_id"])).recipient == "user@example.com"


# --- deadlines, thresholds and repeat offenders (injected clock, real store) ---


@dataclass(frozen=True)
class Context:
    """The config and token codec the feedback service reads."""

    config: Config
    tokens: TokenCodec


@pytest.fixture
async def world(store_url, tls_files):
    """A Feedback service on a real store with a manual clock."""
    clock = ManualClock()
    data = config_data(store_url=store_url, upstream_port=25, tls_files=tls_files)
    data["feedback"] = {"bounce_rate": {"warn": 0.01, "suspend": 0.02, "min_volume": 100}}
    config = parse_config(data)
    context = Context(config, make_codec(config, clock))
    store = open_store(store_url)
    await store.open()
    await store.migrate()
    yield Feedback(store, lambda: context, clock), store, clock, context
    await store.close()


async def spool(store, clock, recipients, *, account="acme") -> list[int]:
    message = NewMessage(
        id=new_message_id(),
        account_id=account,
        mail_from="news@acme.example",
        recipients=tuple(recipients),
        content=simple_message(),
        received_at=clock.now(),
    )
    await store.spool(message)
    return [s.recipient_id for s in await store.sent_in_message(message.id)]


def traced(tokens: TokenCodec, recipient_id: int) -> bytes:
    """A complaint report whose enclosed copy carries only the relay's trace header."""
    enclosed = f"X-Optin-Trace: {tokens.trace(recipient_id)}\r\n".encode() + simple_message(
        to="redacted@isp.example"
    )
    return arf(enclosed)


async def test_complaint_rate_warns_then_suspends(world, log_lines):
    """0.1% warns, 0.3% suspends (complaints / delivered in the window, above min_volume)."""
    feedback, store, clock, context = world
    await store.add_stats([("acme", "delivered", clock.now(), 1000)])
    ids = await spool(store, clock, [f"r{i}@example.net" for i in range(3)])
    result = await feedback.complaint(traced(context.tokens, ids[0]), source="fbl", trusted=False)
    assert [e["rate"] for e in log_lines() if e["event"] == "account_rate_warning"] == [0.001]
    # The CRM learns of it, with the case that asks for the opt-in record.
    types = frozenset({"recipient.complained", "case.opened"})
    told = await read_events(store, 2, types=types)
    assert [(e.type, e.recipient, e.data["case_id"]) for e in told] == [
        ("case.opened", "r0@example.net", result.case_id),
        ("recipient.complained", "r0@example.net", result.case_id),
    ]
    assert await store.account_state("acme") is None  # still active
    await feedback.complaint(traced(context.tokens, ids[1]), source="fbl", trusted=False)
    assert await store.account_state("acme") is None
    await feedback.complaint(traced(context.tokens, ids[2]), source="fbl", trusted=False)
    state = await store.account_state("acme")
    assert state.state == "suspended"
    assert state.reason.startswith("complaint_rate:")


async def test_complaint_rate_needs_volume_and_counts_only_the_window(world):
    """Below min_volume no rate applies; deliveries older than the window do not count."""
    feedback, store, clock, context = world
    await store.add_stats([("acme", "delivered", clock.now(), 5000)])
    clock.advance(8 * 86400)  # those deliveries leave the 7-day window
    await store.add_stats([("acme", "delivered", clock.now(), 999)])
    ids = await spool(store, clock, [f"r{i}@example.net" for i in range(5)])
    for recipient_id in ids:
        await feedback.complaint(traced(context.tokens, recipient_id), source="fbl", trusted=False)
    assert await store.account_state("acme") is None  # 5/999 but under min_volume 1000
    await store.add_stats([("acme", "delivered", clock.now(), 1)])
    [more] = await spool(store, clock, ["r9@example.net"])
    await feedback.complaint(traced(context.tokens, more), source="fbl", trusted=False)
    assert (await store.account_state("acme")).state == "suspended"


async def test_bounce_rate_suspends(world):
    """Hard bounces over the bounce-rate threshold suspend; soft ones only count."""
    feedback, store, clock, _ = world
    await store.add_stats([("acme", "delivered", clock.now(), 100)])
    ids = await spool(store, clock, ["a@example.net", "b@example.net", "c@example.net"])
    soft = (FIXTURES / "dsn/sisimai-rfc3464-07.eml").read_bytes()
    hard = (FIXTURES / "dsn/sisimai-rfc3464-01.eml").read_bytes()
    assert (await feedback.bounce(soft, ids[0])).outcome == "count"
    assert (await feedback.bounce(hard, ids[1])).outcome == "suppress"
    assert await store.account_state("acme") is None  # 1% warns
    assert (await feedback.bounce(hard, ids[2])).outcome == "suppress"
    state = await store.account_state("acme")
    assert state.state == "suspended"
    assert state.reason.startswith("bounce_rate:")
    totals = (await store.stats(since=0))["acme"]
    assert (totals["bounce"], totals["soft_bounce"]) == (2, 1)
    assert (await store.suppressed("b@example.net", "acme")).reason == "bounce"
    assert await store.suppressed("a@example.net", "acme") is None
    bounced = await read_events(store, 3, types=frozenset({"recipient.bounced"}))
    assert [(e.recipient, e.data["bounce"]) for e in bounced] == [
        ("a@example.net", "soft"),
        ("b@example.net", "hard"),
        ("c@example.net", "hard"),
    ]
    assert bounced[0].message_id is not None
    assert bounced[0].data["status"].startswith("4.")


async def test_deadline_upholds_unappealed_cases_and_repeat_offenders_are_suspended(world):
    """No proof by the deadline: upheld with the fine; appealed cases wait for an operator."""
    feedback, store, clock, context = world
    ids = await spool(store, clock, [f"r{i}@example.net" for i in range(5)])
    opened = [
        (await feedback.complaint(traced(context.tokens, i), source="fbl", trusted=False)).case_id
        for i in ids
    ]
    await cases.appeal(
        store, opened[0], "double opt-in log attached", actor="cli:test", now=clock.now()
    )
    clock.advance(6 * 86400)
    assert await cases.sweep(store, lambda: context.config, now=clock.now()) == []
    clock.advance(86400)
    upheld = await cases.sweep(store, lambda: context.config, now=clock.now())
    assert sorted(upheld) == sorted(opened[1:])
    for case_id in opened[1:]:
        case = await store.case(case_id)
        assert (case.status, case.fine_cents, case.resolution) == (
            "upheld",
            10000,
            "no proof of permission by the deadline",
        )
    assert (await store.case(opened[0])).status == "awaiting_proof"
    # Three upheld cases within 30 days: the account is suspended as a repeat offender.
    state = await store.account_state("acme")
    assert state.state == "suspended"
    assert state.reason.startswith("upheld_cases:")


async def test_complaint_from_someone_suppressed_before_the_send_terminates(world):
    """The account had been told to stop mailing them: grounds for termination."""
    feedback, store, clock, context = world
    await store.suppress(
        Suppression("zoe@example.net", "acme", "unsubscribe", "one_click", clock.now()),
        actor="one_click",
    )
    clock.advance(60)
    [recipient_id] = await spool(store, clock, ["zoe@example.net"])
    clock.advance(60)
    result = await feedback.complaint(
        traced(context.tokens, recipient_id), source="fbl", trusted=False
    )
    assert result.outcome == "case"
    state = await store.account_state("acme")
    assert state.state == "terminated"
    assert "suppressed (unsubscribe) before the send" in state.reason


def test_trace_tokens():
    """Short, case-insensitive, unforgeable, and verified by every configured key."""
    clock = ManualClock()
    old = TokenCodec([b"k" * 32], clock, max_age=86400 * 365)
    new = TokenCodec([b"n" * 32, b"k" * 32], clock, max_age=86400 * 365)
    token = old.trace(123456789)
    assert len(f"bounce+{token}") <= 64
    assert new.verify_trace(token) == 123456789
    assert new.verify_trace(token.upper()) == 123456789
    assert old.verify_trace(new.trace(5)) is None
    assert old.verify_trace(token[:-1] + ("a" if token[-1] != "a" else "b")) is None
    assert old.verify_trace("not a token") is None
    assert old.verify(token) is None  # never an unsubscribe token


async def test_stats_count_deliveries_refusals_and_unsubscribes(start_relay, data, upstream):
    """The account statistics the rates are made of come from the real traffic."""
    relay = await start_relay(data)
    await send(relay, ["hal@example.net", "ida@example.net"])
    await eventually(lambda: len(upstream.messages) == 2)
    token = re.search(rb"/u/([A-Za-z0-9_-]+)>", upstream.messages[0].content).group(1).decode()
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{relay.web_port}/u/{token}"
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as answer:
            assert answer.status == 200
    client = await smtp_client(relay.smtp_ports[0], login=ACME)
    await client.mail("news@acme.example")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await client.rcpt(upstream.messages[0].rcpt)  # now suppressed: refused
    await client.quit()
    # Counted in the transaction of their events: once the events are there, so are the counts
    # (nothing waits in memory for a flush that a crash would lose).
    delivered = await read_events(relay.store, 2, types=frozenset({"message.delivered"}))
    refused = await read_events(relay.store, 1, types=frozenset({"recipient.refused"}))
    totals = (await relay.store.stats(since=0, account_id="acme"))["acme"]
    counted = (totals.get("delivered"), totals.get("refused"), totals.get("unsubscribe"))
    assert counted == (len(delivered), len(refused), 1) == (2, 1, 1)


async def test_global_complaint_scope_suppresses_for_every_account(world):
    """feedback.complaint_scope: global puts the complainant on the global list."""
    _, store, clock, context = world
    scope = context.config.feedback.model_copy(update={"complaint_scope": "global"})
    config = context.config.model_copy(update={"feedback": scope})
    glob = Feedback(store, lambda: Context(config, context.tokens), clock)
    [recipient_id] = await spool(store, clock, ["kim@example.net"])
    await glob.complaint(traced(context.tokens, recipient_id), source="fbl", trusted=False)
    assert (await store.suppressed("kim@example.net", "globex")).scope == "*"


# Inputs a fuzzer found to crash the parsers before they were hardened (garbled charset names,
# non-ASCII fields read as Header objects, enclosures the generator refuses to write).
BROKEN = [
    b"From: a@b.example\r\nAuto-Submitted: \xff\xfe auto\r\nSubject: x\r\n\r\nbody\r\n",
    (
        b'From: a@b.example\r\nContent-Type: text/plain; charset="utf\x008"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
    ),
    (
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: =?utf\xef\xbf\xbd8?q?x?=\r\nReceived: from [192.0.2.22]\r\n by mta\r\n3:34\r\n"
        b"\r\nbody\xff\r\n--B--\r\n"
    ),
]


@pytest.mark.parametrize("content", BROKEN)
async def test_broken_reports_never_crash_the_intake(world, content):
    """Whatever arrives, the intake answers with an outcome (and 250 or 550, never a 451 loop)."""
    feedback, store, clock, _ = world
    result = await feedback.complaint(content, source="fbl", trusted=True)
    assert result.outcome in ("ignore", "malformed")
    [recipient_id] = await spool(store, clock, ["lee@example.net"])
    assert (await feedback.bounce(content, recipient_id)).outcome == "ignore"
    assert await store.cases() == []


_REPORT_FIXTURES = sorted(
    path
    for kind in ("arf", "dsn")
    for path in (FIXTURES / kind).iterdir()
    if path.suffix in (".eml", ".txt")
)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(_REPORT_FIXTURES) - 1),
    cut=st.integers(min_value=0, max_value=20_000),
    junk=st.binary(max_size=200),
)
def test_report_readers_answer_any_damaged_report(index, cut, junk):
    """A real report cut anywhere and spliced with junk: a documented answer, never an exception."""
    original = _REPORT_FIXTURES[index].read_bytes()
    damaged = original[:cut] + junk + original[cut:][len(junk) :]
    report = read_complaint(damaged)
    assert report.kind in {
        "complaint",
        "unsubscribe",
        "not_complaint",
        "auto_reply",
        "no_report",
        "malformed",
    }
    for entry in read_dsn(damaged) or []:
        assert bounce_class(entry) in ("hard", "soft", "none")


@settings(max_examples=200, deadline=None)
@given(content=st.binary(max_size=3000))
def test_report_readers_answer_any_bytes(content):
    """Arbitrary bytes to fbl@ or a bounce address: an answer, never an exception."""
    assert read_complaint(content).kind
    read_dsn(content)


async def test_fines_follow_the_complaint_type_and_the_cap(world):
    """feedback.fines by ARF Feedback-Type, each capped by max_fine; the case says how."""
    _, store, clock, context = world
    fines = {"abuse": 100.0, "fraud": 300.0, "virus": 50.0}  # "other" pays `fine`
    feedback_config = context.config.feedback.model_copy(
        update={"fines": fines, "fine": 80.0, "upheld_cases": 100}
    )
    config = context.config.model_copy(update={"feedback": feedback_config})
    context = Context(config, context.tokens)
    feedback = Feedback(store, lambda: context, clock)
    kinds = ["abuse", "fraud", "virus", "other"]
    ids = await spool(store, clock, [f"{kind}@example.net" for kind in kinds])
    opened = {}
    for kind, recipient_id in zip(kinds, ids, strict=True):
        enclosed = f"X-Optin-Trace: {context.tokens.trace(recipient_id)}\r\n".encode()
        report = arf(enclosed + simple_message(to="redacted@isp.example"), feedback_type=kind)
        result = await feedback.complaint(report, source="fbl", trusted=False)
        opened[kind] = result.case_id
    clock.advance(8 * 86400)
    await cases.sweep(store, lambda: config, now=clock.now())
    fines = {kind: (await store.case(case_id)).fine_cents for kind, case_id in opened.items()}
    assert fines == {
        "abuse": 10000,
        "fraud": 10000,  # 300 capped at max_fine 100
        "virus": 5000,
        "other": 8000,  # a type feedback.fines does not name: feedback.fine
    }
    how = [e.detail for e in await store.case_events(opened["fraud"]) if e.action == "uphold"]
    assert how == [
        (
            "no proof of permission by the deadline; fine 100.00 USD for a fraud complaint:"
            " feedback.fines.fraud 300.00 USD, capped at feedback.max_fine 100.00 USD"
        )
    ]
    assert await cases.fines_by_account(store, since=0) == {"acme": 10000 + 10000 + 5000 + 8000}


def _overdue_case(now: float, complainant: str) -> Case:
    """A case awaiting proof whose deadline passed a day ago."""
    return Case(
        new_case_id(), "acme", complainant, "Q1", "Q1", "fbl", "abuse", b"",
        "awaiting_proof", now - 8 * 86400, now - 86400, now - 8 * 86400,
    )  # fmt: skip


async def test_case_sweeps_follow_the_relays_clock(
    start_relay, store, store_url, clock, tls_files, upstream
):
    """What is due at start is upheld before `start()` returns; later sweeps wait for the clock.

    The sweep's schedule is the injected clock's, not the event loop's: while the clock stands
    still nothing more is upheld, however often the interval passes in real time (a background
    sweep once upheld a case a test had just seeded, at random).
    """
    before = _overdue_case(clock.now(), "ann@example.net")
    assert await store.open_case(before)
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["feedback"] = {"sweep_interval": 0.05}
    relay = await start_relay(data)
    assert (await relay.store.case(before.id)).status == "upheld"

    after = _overdue_case(clock.now(), "bob@example.net")
    assert await relay.store.open_case(after)
    await asyncio.sleep(0.5)  # ten intervals of real time, none of the relay's clock
    assert (await relay.store.case(after.id)).status == "awaiting_proof"

    clock.advance(0.05)
    upheld: list[str] = []

    async def check() -> bool:
        upheld.append((await relay.store.case(after.id)).status)
        return upheld[-1] == "upheld"

    deadline = asyncio.get_running_loop().time() + 10
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, upheld[-1]
        await asyncio.sleep(0.02)
