"""Campaign keys survive personalisation and tell different campaigns apart."""

from __future__ import annotations

from email import message_from_bytes
from email import policy as email_policy

from messages import newsletter

from relay.mail.campaign import campaign_key


def key(content: bytes) -> str:
    headers = message_from_bytes(content.split(b"\r\n\r\n")[0], policy=email_policy.compat32)
    return campaign_key(headers, content)


def test_personalised_copies_share_one_key():
    """200 copies differing in name, greeting, tracking links and numbers: one campaign."""
    keys = {key(newsletter(n)) for n in range(200)}
    assert len(keys) == 1
    assert next(iter(keys)).startswith("fp:")


def test_different_campaigns_differ():
    """Another subject or another body is another campaign."""
    base = key(newsletter(1))
    assert key(newsletter(1, subject="Summer sale starts now")) != base
    assert key(newsletter(1, extra=" Sale items cannot be returned after thirty days.")) != base


def test_list_id_names_the_campaign():
    """A List-Id (or X-Campaign-ID) header wins over the fingerprint."""
    content = newsletter(3).replace(
        b"MIME-Version", b"List-Id: Acme News <news.acme.example>\r\nMIME-Version"
    )
    assert key(content) == "id:acme news <news.acme.example>"
    other = newsletter(4).replace(b"MIME-Version", b"X-Campaign-ID: spring-2027\r\nMIME-Version")
    assert key(other) == "id:spring-2027"
