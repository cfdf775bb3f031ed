"""Campaign keys survive personalisation and tell different campaigns apart."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from messages import newsletter

from relay.mail import campaign
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


_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def _reference_normalise(text: str, names: set[str]) -> list[str]:
    """The fingerprint's reading of text before its fast paths, word by word."""
    text = _URL.sub("", text)
    text = campaign._EMAIL.sub("", text)
    text = re.sub(r"\d+", "", text).lower()
    lines = []
    for line in text.splitlines():
        kept = " ".join(w for w in _WORD.findall(line) if w not in names)
        if len(kept) >= campaign._MIN_LINE:
            lines.append(kept)
    return lines


_WORDS = st.lists(
    st.from_regex(r"[A-Za-z]{1,9}|[a-zé]{2,5}", fullmatch=True), min_size=2, max_size=9
)
_GAP = st.sampled_from(
    [
        *(" ", ", ", "-", "_", "3", " 42 ", "\t", "\x1f", "\x00", "'", " HTTPS://X.example/A?b=1 "),
        *(" www.Shop.example ", " Www.x ", " http://a ", " Ann@Example.COM "),
    ]
)
_BREAK = st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"])
_LINE = st.tuples(_WORDS, _GAP, _BREAK).map(lambda t: t[1].join(t[0]) + t[2])
_TEXT = st.lists(_LINE, min_size=1, max_size=8).map("".join) | st.text(max_size=200)


@settings(max_examples=300, deadline=None)
@given(_TEXT, st.sets(st.sampled_from(["reader", "alice", "smith", "de", "x"]), max_size=3))
def test_normalise_reads_text_as_the_word_pattern_does(text, names):
    """The fast reading of ASCII text keeps the same words and lines as the word pattern."""
    assert campaign._normalise(text, names) == _reference_normalise(text, names)


def test_links_are_personalisation_whatever_their_case():
    """A tracking link in capitals is taken out like one in lower case."""
    line = "Read the whole story at {} today, friend\n"
    readings = [
        campaign._normalise(line.format(link), set())
        for link in ("https://t.example/a1", "HTTPS://T.EXAMPLE/B2", "WWW.T.Example/c3")
    ]
    assert readings == [["read the whole story at today friend"]] * 3


def test_from_addresses_are_cached_only_for_ordinary_fields():
    """Copies of one campaign share their parsed From; an oversized From is not kept."""
    campaign._senders.cache_clear()
    assert key(newsletter(1)) == key(newsletter(2))
    assert campaign._senders.cache_info().hits >= 1
    huge = newsletter(1).replace(b"From: ", b"From: " + b"x" * 3000 + b" ", 1)
    size = campaign._senders.cache_info().currsize
    assert key(huge) == key(huge)
    assert campaign._senders.cache_info().currsize == size
