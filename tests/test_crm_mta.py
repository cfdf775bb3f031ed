"""The CRM's MTA in front: a private Postfix relays a newsletter through the relay (SASL, TLS).

Most CRMs do not speak SMTP to the relay themselves: their Postfix has `relayhost` pointing at
it and learns of refusals only from replies and bounces. This runs Debian's Postfix as a
private instance (its own configuration, queue and loopback ports under a temporary folder,
the system's Postfix untouched) with `relayhost`, SASL and `smtp_tls_security_level = encrypt`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from conftest import (
    PASSWORD,
    PASSWORD_HASH,
    TestUpstream,
    eventually,
    free_port,
    read_events,
    smtp_client,
)
from receiver import Receiver, webhook_data

from relay.storage.records import Suppression

pytestmark = pytest.mark.slow
POSTFIX = "/usr/sbin/postfix"
NEWS = "news@acme.example"
CAMPAIGN = "X-Campaign-ID: autumn-2026\r\n"


class PrivatePostfix:
    """A Postfix instance of its own: configuration, queue and ports in a temporary folder."""

    def __init__(self, *, relay_port: int, bounce_port: int) -> None:
        # Not under pytest's folder: its parents are 0700, and Postfix's daemons run as postfix.
        self.dir = Path(tempfile.mkdtemp(prefix="optin-relay-postfix-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.relay_port = relay_port
        self.bounce_port = bounce_port
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self) -> None:
        conf, queue, data = self.dir / "conf", self.dir / "queue", self.dir / "data"
        for folder in (conf, queue, data):
            folder.mkdir()
        postfix = pwd.getpwnam("postfix")
        os.chown(data, postfix.pw_uid, postfix.pw_gid)
        (conf / "relay_passwd").write_text(f"[127.0.0.1]:{self.relay_port} acme-crm:{PASSWORD}\n")
        (conf / "relay_passwd").chmod(0o600)
        # Postfix's own bounces to the CRM's sender domain go to a capture sink (plain SMTP).
        (conf / "transport").write_text(f"acme.example capture:[127.0.0.1]:{self.bounce_port}\n")
        (conf / "main.cf").write_text(
            "\n".join(
                [
                    "compatibility_level = 3.6",
                    "myhostname = crm-mta.test.example",
                    "mydomain = test.example",
                    "myorigin = acme.example",
                    "mydestination =",
                    "inet_interfaces = 127.0.0.1",
                    "inet_protocols = ipv4",
                    "mynetworks = 127.0.0.0/8",
                    "smtpd_relay_restrictions = permit_mynetworks, reject",
                    f"queue_directory = {queue}",
                    f"data_directory = {data}",
                    "mail_owner = postfix",
                    "setgid_group = postdrop",
                    "alias_maps =",
                    "alias_database =",
                    "maillog_file = /dev/stdout",
                    f"relayhost = [127.0.0.1]:{self.relay_port}",
                    f"transport_maps = texthash:{conf}/transport",
                    "smtp_sasl_auth_enable = yes",
                    f"smtp_sasl_password_maps = texthash:{conf}/relay_passwd",
                    "smtp_sasl_security_options = noanonymous",
                    "smtp_sasl_tls_security_options = noanonymous",
                    "smtp_tls_security_level = encrypt",
                    # The relay's bounces of its own come back through the upstream; the MTA's
                    # go out at once (no delay warnings, no retries of a permanent refusal).
                    "delay_warning_time = 0",
                    "smtp_destination_recipient_limit = 50",
                    "",
                ]
            )
        )
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = []
        for line in master:
            fields = line.split()
            if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"  # no chroot: the daemons read this folder's files directly
                lines.append(" ".join(fields))
            else:
                lines.append(line)
        lines.append(
            "capture unix - - n - - smtp -o smtp_tls_security_level=none"
            " -o smtp_sasl_auth_enable=no"
        )
        (conf / "master.cf").write_text("\n".join(lines) + "\n")

    async def start(self) -> None:
        self.configure()
        with (self.dir / "maillog").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [POSTFIX, "-c", str(self.dir / "conf"), "start-fg"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        msg = f"postfix did not start: {self.log()}"
        raise AssertionError(msg)

    def log(self) -> str:
        return (self.dir / "maillog").read_text(errors="replace")

    def stop(self) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.dir / "conf"), "stop"], capture_output=True, check=False
        )
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def newsletter(recipients: list[str]) -> bytes:
    """The autumn newsletter, one campaign across its sends."""
    return (
        f"From: Acme News <{NEWS}>\r\nTo: Acme readers <{NEWS}>\r\nSubject: Autumn sale\r\n"
        f"{CAMPAIGN}Message-ID: <{len(recipients)}-autumn@acme.example>\r\n\r\n"
        "Our autumn sale starts on Friday.\r\n"
    ).encode()


def statuses(report: Message) -> dict[str, Message]:
    """The per-recipient blocks of a DSN, by final recipient (lower-case address)."""
    found = {}
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload()[1:]:
                found[block["Final-Recipient"].split(";", 1)[1].strip().lower()] = block
    return found


async def test_a_newsletter_through_postfix_comes_back_refusal_by_refusal(
    start_relay, sqlite_url, upstream, tls_files
):
    """60 recipients through Postfix: 3 suppressed, 2 past the repeat limit, 55 delivered.

    The 3 come back in Postfix's own bounce with the relay's text; of the 2 (refused at DATA,
    where the relay could only answer 250), the one whose sender did not ask NOTIFY=NEVER in
    the relay's DSN, with the ORCPT and ENVID Postfix passed on; the events feed and the webhooks
    carry all 5, the DATA ones with the message's queue id; `stats` agrees.
    """
    assert shutil.which(POSTFIX), "Debian's postfix is needed (.ci/bootstrap installs it)"
    hooks = Receiver()
    await hooks.start()
    bounces = TestUpstream()
    await bounces.start()
    data = webhook_data(sqlite_url, upstream, tls_files, f"http://127.0.0.1:{hooks.port}/hook")
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    postfix = PrivatePostfix(relay_port=relay.smtp_ports[0], bounce_port=bounces.port)
    try:
        await run_newsletter(relay, upstream, bounces, hooks, postfix)
    except AssertionError:
        print(postfix.log())  # noqa: T201 - what Postfix did, beside the failure
        raise
    finally:
        postfix.stop()
        await hooks.stop()
        await bounces.stop()


async def check_relay_dsn(upstream: TestUpstream, repeated: list[str]) -> None:
    """The relay's DSN: the DATA refusals Postfix saw as 250, but for the NOTIFY=NEVER one."""
    await eventually(lambda: any(m.rcpt == NEWS for m in upstream.messages), timeout=30)
    dsn = next(m for m in upstream.messages if m.rcpt == NEWS)
    assert dsn.mail_from == "<>"
    report = message_from_bytes(dsn.content)
    relay_blocks = statuses(report)
    assert set(relay_blocks) == {repeated[1]}  # repeated[0] asked NOTIFY=NEVER
    for address, block in relay_blocks.items():
        assert block["Action"] == "failed"
        assert "already got this message 3 times" in block["Diagnostic-Code"]
        assert block["Original-Recipient"] == f"rfc822;{address}"  # Postfix's ORCPT
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    assert status.get_payload()[0]["Original-Envelope-Id"] == "autumn+60"


async def run_newsletter(relay, upstream, bounces, hooks, postfix) -> None:
    everyone = [f"reader{n:02d}@example.net" for n in range(60)]
    repeated, suppressed = everyone[:2], everyone[10:13]
    now = relay.clock.now()
    for address in suppressed:
        entry = Suppression(address, "acme", "unsubscribe", "one_click", now)
        await relay.store.suppress(entry, actor="test")
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    for _ in range(3):  # the campaign three times already: a fourth copy is one too many
        await client.sendmail(NEWS, repeated, newsletter(repeated))
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 6, timeout=30)

    await postfix.start()
    mta = await smtp_client(postfix.port, starttls=False)
    await mta.mail(NEWS, options=["ENVID=autumn+2B60"])
    for address in everyone:
        # The first of the two past the limit: its sender asked for no failure notice, and
        # Postfix passes that on (the relay offers DSN).
        options = ["NOTIFY=NEVER"] if address == repeated[0] else []
        await mta.rcpt(address, options=options)
    response = await mta.data(newsletter(everyone))
    await mta.quit()
    assert response.message[:5] == "2.0.0"  # Postfix took it for all 60

    await eventually(
        lambda: len({m.rcpt for m in upstream.messages[6:] if m.rcpt != NEWS}) == 55, timeout=60
    )
    delivered = {m.rcpt for m in upstream.messages[6:] if m.rcpt != NEWS}
    assert delivered == set(everyone) - set(repeated) - set(suppressed)

    # Postfix's bounce: the RCPT refusals, with the relay's own text.
    await eventually(lambda: bounces.messages, timeout=60)
    mta_bounce = message_from_bytes(bounces.messages[0].content)
    assert bounces.messages[0].rcpt == NEWS
    blocks = {}
    for captured in bounces.messages:
        blocks |= statuses(message_from_bytes(captured.content))
    assert set(blocks) == set(suppressed), mta_bounce
    for block in blocks.values():
        assert block["Action"] == "failed"
        assert "has unsubscribed" in block["Diagnostic-Code"]

    await check_relay_dsn(upstream, repeated)

    # The feed and the webhooks: all five, the DATA ones with the queue id of the message.
    events = await read_events(relay.store, 5, types=frozenset({"recipient.refused"}))
    by_recipient = {e.recipient: e for e in events}
    assert set(by_recipient) == set(suppressed) | set(repeated)
    assert {by_recipient[a].data["stage"] for a in suppressed} == {"rcpt"}
    assert {by_recipient[a].data["stage"] for a in repeated} == {"data"}
    queue_ids = {by_recipient[a].message_id for a in repeated}
    assert len(queue_ids) == 1
    assert None not in queue_ids
    accepted = await read_events(relay.store, 4, types=frozenset({"message.accepted"}))
    assert queue_ids <= {e.message_id for e in accepted}
    await eventually(
        lambda: sum(e["type"] == "recipient.refused" for e in hooks.events()) == 5, timeout=30
    )
    pushed = {e["recipient"]: e for e in hooks.events() if e["type"] == "recipient.refused"}
    assert {a: e["message_id"] for a, e in pushed.items()} == {
        a: e.message_id for a, e in by_recipient.items()
    }
    totals = (await relay.store.stats(since=0, account_id="acme"))["acme"]
    assert totals["refused"] == 5
