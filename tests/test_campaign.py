"""Campaign keys survive personalisation and tell different campaigns apart."""

from __future__ import annotations

import random
from email import message_from_bytes
from email import policy as email_policy

from relay.mail.campaign import campaign_key

NAMES = ["Alice Smith", "Bob Jones", "Chen Wei", "Dana O'Neil", "Émile Zola", "Farah Khan"]
GREETINGS = ["Hi", "Hello", "Dear", "Hey there"]


def newsletter(n: int, *, subject: str = "Our spring collection is here", extra: str = "") -> bytes:
    rng = random.Random(n)
    name = NAMES[n % len(NAMES)] + f" {n}"
    first = name.split()[0]
    local = first.lower().replace("é", "e") + f".{n}"
    greeting = rng.choice(GREETINGS)
    html = (
        f"<html><body><p>{greeting} {first},</p>"
        f"<p>Our spring collection has arrived and we picked a few pieces for you, {first}.</p>"
        f'<p><a href="https://click.acme.example/t/{rng.getrandbits(64):x}?u={n}">See the new '
        f"arrivals in our online store today</a></p>"
        f"<p>Free shipping on every order above fifty euros until the end of the month.{extra}</p>"
        f"<p>Your customer number is {1000 + n}.</p></body></html>"
    )
    return (
        f"From: Acme <news@acme.example>\r\nTo: {name} <{local}@example.net>\r\n"
        f"Subject: {first}, {subject}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
    ).encode()


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
