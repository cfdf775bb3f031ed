"""Unsubscribe tokens: round trip, tamper-proof, key rotation, expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.clock import ManualClock
from relay.tokens import TokenCodec, campaign_tag

KEY_A = b"a" * 32
KEY_B = b"b" * 32
YEAR = 365 * 86400


# Issued by the version 1 codec (fields in clear, HMAC) with KEY_A on ManualClock's first day.
V1_TOKEN = "MR9hY21lH2FsaWNlQGV4YW1wbGUubmV0H2MxHzIwODMzQng3RQ0uPdtKLbrGda-vqQ"


def legacy_token(key: bytes, account: str, recipient: str, campaign: str, day: int) -> str:
    """A version 1 token, as the relay issued them before issue 13 (for compatibility tests)."""
    payload = b"\x1f".join([b"1", account.encode(), recipient.encode(), campaign.encode()])
    payload += b"\x1f" + str(day).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")


def codec(keys=(KEY_A,), clock=None, max_age=YEAR):
    return TokenCodec(list(keys), clock or ManualClock(), max_age=max_age)


def test_round_trip_is_url_safe():
    """A token names account, recipient and campaign, and is URL- and address-safe."""
    token = codec().issue("acme", "Alice@Example.net", campaign_tag("newsletter-42"))
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    claim = codec().verify(token)
    assert claim is not None
    assert (claim.account_id, claim.recipient) == ("acme", "Alice@Example.net")
    assert claim.campaign == campaign_tag("newsletter-42")


def unpadded(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_token_reveals_neither_account_nor_recipient():
    """Finding 5 of the hardening review: decoding a token gives nothing readable."""
    token = codec().issue("acme", "alice@example.net", campaign_tag("newsletter"))
    raw = unpadded(token)
    for secret in (b"acme", b"alice", b"example.net", campaign_tag("newsletter").encode()):
        assert secret not in raw
    # Sealed, not merely signed: the same claim under another key shares no bytes with it.
    other = unpadded(codec(keys=(KEY_B,)).issue("acme", "alice@example.net", "x"))
    assert raw[1:17] != other[1:17]


def test_version_1_tokens_keep_working_for_their_lifetime():
    """Tokens in mail rendered before the change verify until they expire; never issued now."""
    clock = ManualClock()
    tokens = codec(clock=clock, max_age=30 * 86400)
    assert legacy_token(KEY_A, "acme", "alice@example.net", "c1", 20833) == V1_TOKEN
    claim = tokens.verify(V1_TOKEN)
    assert claim is not None
    assert (claim.account_id, claim.recipient) == ("acme", "alice@example.net")
    assert claim.campaign == "c1"
    assert codec(keys=(KEY_B, KEY_A)).verify(V1_TOKEN) is not None  # an old key still verifies
    assert codec(keys=(KEY_B,)).verify(V1_TOKEN) is None
    assert not unpadded(tokens.issue("acme", "alice@example.net", "c1")).startswith(b"1")
    forged = legacy_token(KEY_B, "acme", "alice@example.net", "c1", 20833)
    assert tokens.verify(forged) is None
    clock.advance(32 * 86400)
    assert tokens.verify(V1_TOKEN) is None


def test_any_change_invalidates():
    """Flipping any bit of a token makes it invalid."""
    token = codec().issue("acme", "alice@example.net", "c1")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in range(len(raw)):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("=")
        assert codec().verify(forged) is None
    assert codec().verify(token[:-2]) is None
    assert codec().verify("") is None
    assert codec().verify("not a token!") is None


def test_other_key_does_not_verify():
    """A token made with a key the relay does not have is refused."""
    assert codec().verify(codec(keys=(KEY_B,)).issue("acme", "a@example.net", "c")) is None


def test_key_rotation():
    """The first key signs; older keys still verify the tokens they made."""
    old_token = codec(keys=(KEY_A,)).issue("acme", "a@example.net", "c")
    rotated = codec(keys=(KEY_B, KEY_A))
    assert rotated.verify(old_token) is not None
    new_token = rotated.issue("acme", "a@example.net", "c")
    assert codec(keys=(KEY_B,)).verify(new_token) is not None
    assert codec(keys=(KEY_A,)).verify(new_token) is None


def test_expiry():
    """A token works for at least max_age, then is refused."""
    clock = ManualClock()
    tokens = codec(clock=clock, max_age=30 * 86400)
    token = tokens.issue("acme", "a@example.net", "c")
    clock.advance(30 * 86400)
    assert tokens.verify(token) is not None
    clock.advance(2 * 86400)
    assert tokens.verify(token) is None


@given(
    account=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    recipient=st.emails(),
)
def test_round_trip_property(account, recipient):
    """Any account id and address survive the round trip."""
    claim = codec().verify(codec().issue(account, recipient, campaign_tag(recipient)))
    assert claim is not None
    assert (claim.account_id, claim.recipient) == (account, recipient)


def test_needs_a_key():
    """No keys, no codec."""
    with pytest.raises(ValueError):
        TokenCodec([], ManualClock(), max_age=YEAR)


def test_mailto_tokens_are_short_case_insensitive_and_of_their_own_kind():
    """unsub+TOKEN fits a 64-octet local part, survives case folding and rotation; no trace."""
    old = codec()
    new = codec(keys=(KEY_B, KEY_A))
    token = old.unsubscribe_address(2**40 + 7)
    assert len(f"unsub+{token}") <= 64
    assert token == token.lower()
    assert new.verify_unsubscribe_address(token.upper()) == 2**40 + 7
    assert old.verify_unsubscribe_address(new.unsubscribe_address(9)) is None  # unknown key
    assert old.verify_unsubscribe_address(old.trace(9)) is None  # a bounce token is not one
    assert old.verify_trace(old.unsubscribe_address(9)) is None
    assert old.verify(token) is None
    middle = len(token) // 2
    altered = token[:middle] + ("a" if token[middle] != "a" else "b") + token[middle + 1 :]
    assert old.verify_unsubscribe_address(altered) is None
