"""Mail to the relay's own addresses: complaint reports as mailbox providers send them.

Shared by several test modules (test modules never import each other).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage

import aiosmtplib
from conftest import PASSWORD, smtp_client

from relay.storage.records import new_message_id

ACME = ("acme-crm", PASSWORD)
INBOUND = "relay.test.example"


def listeners() -> list[dict[str, str]]:
    return [
        {"address": "127.0.0.1:0", "tls": "starttls"},
        {"address": "127.0.0.1:0", "tls": "none", "auth": "optional"},
    ]


async def inbound(relay, address: str, content: bytes) -> tuple[int, str]:
    """Mail `content` to one of the relay's own addresses, without AUTH (port 25 style)."""
    client = await smtp_client(relay.smtp_ports[1], starttls=False)
    await client.mail("reports@isp.example")
    await client.rcpt(address)
    try:
        response = await client.data(content)
    except aiosmtplib.SMTPDataError as exc:
        await client.quit()
        return exc.code, exc.message
    await client.quit()
    return response.code, response.message


def arf(enclosed: bytes, *, rcpt_to: str | None = None, feedback_type: str = "abuse") -> bytes:
    """An RFC 5965 report about `enclosed`, as a mailbox provider sends it."""
    report = EmailMessage()
    report["From"] = "feedback@isp.example"
    report["To"] = f"fbl@{INBOUND}"
    report["Subject"] = "FW: complaint"
    report["Message-ID"] = f"<{new_message_id()}@isp.example>"
    report.set_content("This is an email abuse report.\n")
    report.make_mixed()
    report.replace_header("Content-Type", 'multipart/report; report-type="feedback-report"')
    fields = EmailMessage()
    fields["Content-Type"] = "message/feedback-report"
    block = f"Feedback-Type: {feedback_type}\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
    if rcpt_to:
        block += f"Original-Rcpt-To: {rcpt_to}\r\n"
    fields.set_payload(block)
    report.attach(fields)
    original = EmailMessage()
    original["Content-Type"] = "message/rfc822"
    original.set_payload([message_from_bytes(enclosed)])
    report.attach(original)
    return report.as_bytes()
