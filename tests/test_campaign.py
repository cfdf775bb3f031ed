"""Campaign keys survive personalisation and tell different campaigns apart."""

from __future__ import annotations

from messages import newsletter

from relay.mail.campaign import campaign_key, parse


def key(content: bytes) -> str:
    return campaign_key(parse(content))


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


def test_parse_reads_every_header_however_long_the_header_block():
    """One parse serves the policies: fields after 600 KB of others are still read."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 90) for i in range(6500))
    content = filler + b"From: News <news@acme.example>\r\nSubject: Late\r\n\r\nBody text.\r\n"
    assert len(content) > 600_000
    parsed = parse(content)
    assert (parsed["From"], parsed["Subject"]) == ("News <news@acme.example>", "Late")


def test_parse_bounds_the_body_it_reads():
    """A large body is read up to what the key needs; the key still tells campaigns apart."""
    body = b"A line of the newsletter that is long enough to count as text.\r\n" * 20_000
    content = b"From: news@acme.example\r\nSubject: Big\r\n\r\n" + body
    parsed = parse(content)
    assert len(parsed.get_payload()) < len(body)
    assert campaign_key(parsed) != key(content.replace(b"newsletter", b"catalogue"))
