"""Messages the tests send and render: newsletters, the issue-3 set and the MIME fixtures.

Shared by several test modules (test modules never import each other).
"""

from __future__ import annotations

import base64
import random
import re
from email import policy as email_policy
from email.message import EmailMessage
from pathlib import Path

from relay.mail.render import Footer, list_unsubscribe_headers

FIXTURES = Path(__file__).parent / "fixtures"
URL = "https://relay.test.example/u/TOKEN-abc_123"
MAILTO = "unsub+TOKEN-abc_123@relay.test.example"
FOOTER = Footer(
    text=f"Unsubscribe: {URL}\nAcme Newsletter, 1 Acme Way, Springfield \u00c9tat",
    html=f'<p><a href="{URL}">Unsubscribe</a><br>Acme Newsletter, 1 Acme Way</p>',
)
HEADERS = list_unsubscribe_headers(URL, MAILTO)
LU_SYNTAX = re.compile(r"^<https://[^\s<>,]+>(?:,\s*<mailto:[^\s<>,]+>)*$")
SEALED = {"multipart/signed", "multipart/encrypted", "application/pkcs7-mime"}


def crlf(raw: bytes) -> bytes:
    """As the message sits in the spool after SMTP: CRLF line ends."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


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


def own_messages() -> dict[str, bytes]:
    """The issue's own set of messages.

    HTML newsletter, text only, alternative with inline images, 8bit latin-1, base64 UTF-8,
    one that already has List-Unsubscribe headers, and minified HTML on one long line.
    """
    out: dict[str, bytes] = {}

    html = EmailMessage()
    html["From"] = "news@acme.example"
    html["Subject"] = "Newsletter"
    html.set_content(
        "<html><head><style>p{}</style></head><body><h1>News</h1>"
        + "<p>item</p>" * 200
        + "</body></html>",
        subtype="html",
    )
    out["html-newsletter"] = html.as_bytes(policy=email_policy.SMTP)

    text = EmailMessage()
    text["From"] = "news@acme.example"
    text.set_content("Just text.\nTwo lines.\n")
    out["text-only"] = text.as_bytes(policy=email_policy.SMTP)

    alt = EmailMessage()
    alt["From"] = "news@acme.example"
    alt.set_content("Plain version\n")
    alt.add_alternative(
        '<html><body><img src="cid:logo"><p>HTML version</p></body></html>', subtype="html"
    )
    alt.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\nfakeimage", "image", "png", cid="<logo>")
    out["alternative-inline-images"] = alt.as_bytes(policy=email_policy.SMTP)

    out["8bit-latin1"] = (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Gr\u00fc\u00dfe aus K\u00f6ln, sch\u00f6ne Tage!\r\n".encode("latin-1")
    )
    out["base64-utf8"] = (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("\u3053\u3093\u306b\u3061\u306f \u4e16\u754c\n".encode()).replace(
            b"\n", b"\r\n"
        )
    )
    out["existing-list-unsubscribe"] = (
        b"From: news@acme.example\r\n"
        b"List-Unsubscribe: <mailto:old@crm.example?subject=unsub>,\r\n <https://crm.example/u/1>\r\n"
        b"list-unsubscribe-post: List-Unsubscribe=One-Click\r\n"
        b"Subject: has its own\r\n\r\nBody\r\n"
    )
    out["minified-html-long-line"] = (
        b"From: news@acme.example\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
        b"<html><body>" + b"<b>x</b>" * 108 + b"</body></html>\r\n"
    )
    return out


FIXTURE_FILES = sorted((FIXTURES / "mime").iterdir()) + sorted((FIXTURES / "signed").iterdir())


# The unsubscribe token of one relayed copy, from its List-Unsubscribe field.
TOKEN = re.compile(
    rb"List-Unsubscribe: <https://relay\.test\.example/u/([A-Za-z0-9_-]+)>,\r\n"
    rb" <mailto:(unsub\+[a-z2-7]+)@relay\.test\.example>"
)


def token_of(content: bytes) -> str:
    """The https unsubscribe token of one relayed copy."""
    match = TOKEN.search(content)
    assert match is not None, content[:600]
    return match.group(1).decode()
