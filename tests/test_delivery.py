"""Delivery through the real server and a real upstream: retries, per-recipient state, DSNs."""

from __future__ import annotations

import asyncio
import random
from email import message_from_bytes

import pytest
import yaml
from clirun import run_cli
from conftest import (
    PASSWORD,
    TestUpstream,
    assert_relayed_intact,
    config_data,
    eventually,
    free_port,
    simple_message,
    smtp_client,
)

from relay.config import DeliveryConfig
from relay.delivery.upstream import SendResult
from relay.delivery.worker import retry_delay
from relay.policy import CONTINUE, BasePolicy, Defer, Pipeline, Reject, Rendering, Verdict
from relay.runtime import Runtime

LOGIN = ("acme-crm", PASSWORD)


async def send(relay, recipients, message=None, sender="news@acme.example"):
    client = await smtp_client(relay.smtp_ports[0], login=LOGIN)
    await client.sendmail(sender, recipients, message or simple_message())
    await client.quit()


def events(log_lines, name):
    return [e for e in log_lines() if e["event"] == name]


async def test_upstream_down_then_back(start_relay, store_url, tls_files, clock, log_lines):
    """Upstream down on arrival: accepted, deferred, delivered once the upstream is back."""
    port = free_port()
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=port, tls_files=tls_files)
    )
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 1)
    deferred = events(log_lines, "delivery_deferred")[0]
    assert deferred["attempt"] == 1
    assert deferred["next_try"] == pytest.approx(clock.now() + 60)
    assert "connection failed" in deferred["upstream_reply"]

    upstream = TestUpstream()
    await upstream.start(port)
    try:
        relay.delivery.wake()  # not yet due: nothing is sent before the retry time
        clock.advance(30)
        relay.delivery.wake()
        clock.advance(31)
        relay.delivery.wake()
        await eventually(lambda: len(upstream.messages) == 1)
        assert upstream.messages[0].rcpt == "alice@example.net"
        await eventually(lambda: len(events(log_lines, "delivery_succeeded")) == 1)
        assert events(log_lines, "delivery_succeeded")[0]["attempt"] == 2
        assert await relay.store.counts() == {"delivered": 1}
    finally:
        await upstream.stop()


async def test_one_of_three_refused_gets_dsn(
    start_relay, store_url, tls_files, upstream: TestUpstream, log_lines
):
    """Upstream answers 550 for one of three: two are delivered, one DSN goes to the sender.

    The DSN names the refused recipient and carries the upstream's reply.
    """
    upstream.reject["bob@example.net"] = "550 5.1.1 No such user here"
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    await send(relay, ["alice@example.net", "bob@example.net", "carol@example.net"])
    await eventually(lambda: len(upstream.messages) == 3)
    by_rcpt = {m.rcpt: m for m in upstream.messages}
    assert set(by_rcpt) == {"alice@example.net", "carol@example.net", "news@acme.example"}
    dsn = by_rcpt["news@acme.example"]
    assert dsn.mail_from == "<>"  # aiosmtpd shows the null sender as <>
    report = dsn.message
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    fields = {k: v for block in status.get_payload() for k, v in block.items()}
    assert fields["Final-Recipient"] == "rfc822; bob@example.net"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    assert "No such user here" in fields["Diagnostic-Code"]
    headers = next(p for p in report.walk() if p.get_content_type() == "text/rfc822-headers")
    assert "Subject: Test" in headers.get_payload()
    await eventually(lambda: len(events(log_lines, "delivery_succeeded")) == 3)
    failed = events(log_lines, "delivery_failed")
    assert [(e["recipient"], e["expired"]) for e in failed] == [("bob@example.net", False)]
    assert len(events(log_lines, "dsn_queued")) == 1


async def test_expiry_after_max_age_sends_dsn(start_relay, store_url, tls_files, clock, log_lines):
    """A message still undeliverable after delivery.max_age fails with an 'expired' DSN."""
    port = free_port()
    data = config_data(
        store_url=store_url,
        upstream_port=port,
        tls_files=tls_files,
        delivery={"retry_schedule": [600], "max_age": 1800, "jitter": 0, "poll_interval": 0.05},
    )
    relay = await start_relay(data)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 1)
    clock.advance(900)
    relay.delivery.wake()
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 2)
    clock.advance(901)  # now older than max_age
    upstream = TestUpstream()
    await upstream.start(port)
    try:
        upstream.reject["alice@example.net"] = "451 4.3.0 still busy"
        relay.delivery.wake()
        await eventually(lambda: len(upstream.messages) == 1)
        dsn = upstream.messages[0]
        assert (dsn.rcpt, dsn.mail_from) == ("news@acme.example", "<>")
        assert b"could not be delivered within the time allowed" in dsn.content
        failed = events(log_lines, "delivery_failed")
        assert failed[0]["expired"] is True
    finally:
        await upstream.stop()


async def test_never_a_dsn_about_a_dsn(
    start_relay, store_url, tls_files, upstream: TestUpstream, log_lines
):
    """When the DSN itself is refused, it fails without producing another DSN."""
    upstream.reject["bob@example.net"] = "550 5.1.1 No such user"
    upstream.reject["news@acme.example"] = "550 5.1.1 Sender mailbox gone"
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    await send(relay, ["bob@example.net"])
    await eventually(lambda: len(events(log_lines, "delivery_failed")) == 2)
    failed = events(log_lines, "delivery_failed")
    assert [e["recipient"] for e in failed] == ["bob@example.net", "news@acme.example"]
    assert len(events(log_lines, "dsn_queued")) == 1
    assert await relay.store.counts() == {"failed": 2}
    assert upstream.messages == []


class _RenderPolicy(BasePolicy):
    name = "render_probe"

    def __init__(self, verdict: Verdict | None = None, *, crash: bool = False) -> None:
        self.verdict = verdict or CONTINUE
        self.crash = crash

    async def on_render(self, rendering: Rendering) -> Verdict:
        if self.crash:
            msg = "render broke"
            raise RuntimeError(msg)
        rendering.content = (
            b"X-Rendered-For: " + rendering.recipient.encode() + b"\r\n" + (rendering.content)
        )
        return self.verdict


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        (_RenderPolicy(), "delivery_succeeded"),
        (_RenderPolicy(Defer("try later", "render_probe")), "delivery_deferred"),
        (_RenderPolicy(Reject("refused", "render_probe")), "delivery_failed"),
        (_RenderPolicy(crash=True), "delivery_deferred"),
    ],
)
async def test_render_stage_verdicts(
    start_relay, sqlite_url, tls_files, upstream: TestUpstream, log_lines, policy, outcome
):
    """The render stage rewrites each copy; defer retries; reject fails; a crash defers."""
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    current = relay.runtime.current
    relay.runtime.current = Runtime(current.config, Pipeline([policy]), current.tls, current.tokens)
    await send(relay, ["alice@example.net"])
    await eventually(lambda: len(events(log_lines, outcome)) >= 1)
    if outcome == "delivery_succeeded":
        assert upstream.messages[0].content.startswith(b"X-Rendered-For: alice@example.net\r\n")
    else:
        assert all(m.rcpt != "alice@example.net" for m in upstream.messages)
        assert events(log_lines, outcome)[0]["rule"] == "render_probe"


def test_retry_delay_follows_schedule_with_jitter():
    """The n-th retry waits schedule[n] (the last entry repeats), within +-jitter."""
    config = DeliveryConfig(retry_schedule=[60, 300, 900], jitter=0.2)
    rng = random.Random(7)
    for attempt, base in [(1, 60), (2, 300), (3, 900), (9, 900)]:
        delays = [retry_delay(config, attempt, rng) for _ in range(200)]
        assert min(delays) >= base * 0.8
        assert max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.1  # jitter actually spreads retries
    assert retry_delay(DeliveryConfig(retry_schedule=[60], jitter=0), 5, rng) == 60


async def test_dsn_parses_as_rfc3464(start_relay, sqlite_url, tls_files, upstream, log_lines):
    """The DSN has the three parts of RFC 3464 and names the reporting MTA."""
    upstream.reject["bob@example.net"] = "554 5.7.1 Rejected by policy"
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    await send(relay, ["bob@example.net"])
    await eventually(lambda: len(upstream.messages) == 1)
    report = message_from_bytes(upstream.messages[0].content)
    parts = [p.get_content_type() for p in report.get_payload()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert report["Auto-Submitted"] == "auto-replied"
    assert b"Reporting-MTA: dns; relay.test.example" in upstream.messages[0].content


async def test_outcome_after_lost_lease_is_dropped_and_logged(
    start_relay, store_url, tls_files, upstream, clock, log_lines
):
    """A worker whose lease ran out does not overwrite the new owner's state; it says so."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files),
        run_delivery=False,
    )
    await send(relay, ["alice@example.net"])
    now = clock.now()
    (stale,) = await relay.store.claim(lease="old:1", now=now, lease_until=now + 1, limit=5)
    (fresh,) = await relay.store.claim(lease="new:1", now=now + 2, lease_until=now + 60, limit=5)
    await relay.delivery.record(
        stale, SendResult("delivered", "250 ok"), relay.config, b"", rule=None
    )
    lost = [e for e in log_lines() if e["event"] == "delivery_lease_lost"]
    assert [e["recipient"] for e in lost] == ["alice@example.net"]
    assert await relay.store.counts() == {"pending": 1}
    await relay.delivery.record(fresh, SendResult("delivered", "250 ok"), relay.config, b"")
    assert await relay.store.counts() == {"delivered": 1}


async def test_accept_only_process_leaves_delivery_to_others(
    start_relay, store_url, tls_files, upstream
):
    """`delivery.enabled: false` accepts and spools; a process sharing the store delivers."""
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    accepting = await start_relay({**data, "delivery": {"enabled": False, "poll_interval": 0.05}})
    await send(accepting, ["alice@example.net", "bob@example.net"])
    await asyncio.sleep(0.3)  # several polls: nothing may go out from the accepting process
    assert upstream.messages == []
    assert await accepting.store.counts() == {"pending": 2}
    await start_relay({**data, "delivery": {"poll_interval": 0.05}})
    await eventually(lambda: len(upstream.messages) == 2)
    assert sorted(m.rcpt for m in upstream.messages) == ["alice@example.net", "bob@example.net"]


async def test_own_accepted_mail_is_delivered_without_reading_it_back(
    start_relay, store_url, tls_files, upstream
):
    """The accepting process keeps the content it committed: delivery does not re-read it."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    reads: list[str] = []
    content = relay.store.content

    async def counted(message_id: str) -> bytes:
        reads.append(message_id)
        return await content(message_id)

    relay.store.content = counted
    message = simple_message(body="kept in memory")
    await send(relay, ["alice@example.net", "bob@example.net"], message)
    await eventually(lambda: len(upstream.messages) == 2)
    assert reads == []
    for copy in upstream.messages:
        assert_relayed_intact(copy.content, message)


class CrashingUpstream:
    """An upstream whose client raises for one recipient: a bug, not an SMTP answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def send(self, mail_from: str, recipient: str, content: bytes) -> SendResult:
        if recipient.startswith("boom@"):
            msg = "a bug in the upstream client"
            raise RuntimeError(msg)
        self.sent.append((mail_from, recipient, content))
        return SendResult("delivered", "250 ok")

    async def close(self) -> None:
        return None

    async def accepts_8bit(self) -> bool:
        return True


async def test_a_delivery_that_raises_fails_that_recipient_alone(
    start_relay, store_url, tls_files, clock, log_lines
):
    """An exception while delivering one copy is retried like a 4xx, then fails with a DSN.

    Finding 2 of the hardening review: such a recipient crashed at every lease for ever, with
    neither delivery nor DSN. The other recipient of the same message is delivered at once.
    """
    fake = CrashingUpstream()
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=free_port(), tls_files=tls_files),
        upstream=fake,
    )
    await send(relay, ["fine@example.net", "boom@example.net"])
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 1)
    # The delivered outcome is written in a batch of its own: wait for it before the clock
    # jumps past the lease, or the retry would lease "fine" again.
    await eventually(lambda: len(events(log_lines, "delivery_succeeded")) == 1)
    assert [r for _, r, _ in fake.sent] == ["fine@example.net"]
    deferred = events(log_lines, "delivery_deferred")[0]
    assert deferred["upstream_reply"].startswith("451 4.3.0")
    clock.advance(61)  # the first retry is due
    relay.delivery.wake()
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 2)  # recorded
    clock.advance(301)
    relay.delivery.wake()
    await eventually(lambda: len(events(log_lines, "delivery_failed")) == 1)
    assert len(events(log_lines, "delivery_crashed")) == 3
    failed = events(log_lines, "delivery_failed")[0]
    assert (failed["recipient"], failed["upstream_reply"][:9]) == ("boom@example.net", "554 5.3.0")
    await eventually(lambda: len(fake.sent) == 2)  # the DSN to the sender
    assert fake.sent[1][1] == "news@acme.example"
    assert b"boom@example.net" in fake.sent[1][2]


async def test_queue_retry_makes_deferred_mail_due_at_once(
    start_relay, store_url, tls_files, log_lines, tmp_path
):
    """Upstream down, 20 messages deferred; back up, `queue retry --all` delivers them in 5 s.

    As Postfix's `postqueue -f`: the retry schedule (60 s here) is not waited for, and the
    running relay picks the change up from the store.
    """
    port = free_port()
    data = config_data(store_url=store_url, upstream_port=port, tls_files=tls_files)
    relay = await start_relay(data)
    await send(relay, [f"r{n}@example.net" for n in range(20)])
    await eventually(lambda: len(events(log_lines, "delivery_deferred")) == 20)
    upstream = TestUpstream()
    await upstream.start(port)
    try:
        path = tmp_path / "cli.yaml"
        path.write_text(yaml.safe_dump(data))
        usage = await asyncio.to_thread(
            run_cli, "queue", "retry", "--config", str(path), check=False
        )
        assert usage.returncode == 2  # say what to retry
        done = await asyncio.to_thread(run_cli, "queue", "retry", "--all", "--config", str(path))
        assert done.stdout.strip() == "20 recipients due now"
        await eventually(lambda: len(upstream.messages) == 20, timeout=5)
    finally:
        await upstream.stop()


async def test_delivery_goes_on_after_its_loop_crashes(
    start_relay, sqlite_url, tls_files, upstream, log_lines
):
    """An error nobody foresaw in the claim loop is logged, and delivery starts again.

    It stopped delivery for good while the relay went on accepting: a PostgreSQL connection
    killed mid-claim raised asyncpg's InternalClientError, which the store did not translate.
    """
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    claim = relay.store.claim
    raised = []

    async def claim_once_broken(**kwargs):
        if not raised:
            raised.append(True)
            msg = "cannot switch to state 12; another operation (2) is in progress"
            raise RuntimeError(msg)
        return await claim(**kwargs)

    relay.store.claim = claim_once_broken
    await send(relay, ["alice@example.net"])
    await eventually(lambda: [m.rcpt for m in upstream.messages] == ["alice@example.net"])
    (crashed,) = events(log_lines, "task_crashed")
    assert (crashed["task"], crashed["level"]) == ("delivery", "error")
    assert "cannot switch to state 12" in crashed["exception"]
