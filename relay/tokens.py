"""Unsubscribe tokens: opaque, URL-safe claims that cannot be read, forged or altered.

A token carries the account, the recipient, a hash of the campaign key and the issue day,
encrypted and authenticated with AES-SIV (`cryptography`) under a key derived (HKDF-SHA256) from
the first configured key: a link scanner, a proxy or an access log that sees the URL learns
nothing of who it is for. Every configured key decrypts, so keys rotate by putting a new one
first and keeping the old ones until their tokens have expired.

Tokens of version 1 (before issue 13) carried the same fields in clear with an HMAC; they still
verify for their lifetime, and are never issued any more.

The short tokens (`bounce+`, `unsub+`, the trace header) name a spooled recipient by its row id
and a MAC: no address, no account.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from relay.clock import Clock

_VERSION = b"1"  # the HMAC token in clear: verified, no longer issued
_SEALED = b"\x02"  # the AES-SIV token (its first raw byte; a version 1 token starts with "1")
_SEALED_INFO = b"optin-relay unsubscribe token v2"
_SEP = b"\x1f"  # unit separator: never part of an address, an account id or a hash
_MAC_BYTES = 16
_DAY = 86400
_TRACE = b"trace"  # domain separation: a trace MAC never verifies as an unsubscribe token
_TRACE_MAC_BYTES = 10
_TRACE_ID_BYTES = 8
_UNSUB = b"unsub"  # domain separation for the short mailto unsubscribe token
_FORM = b"form"  # domain separation for the subscription form's CSRF tokens
_TERMS = b"terms"  # and for the links that accept the terms of use


@dataclass(frozen=True)
class Claim:
    """What a valid token says."""

    account_id: str
    recipient: str
    campaign: str
    issued: float


def campaign_tag(campaign_key: str | None) -> str:
    """A short, stable tag for a campaign key (the key itself may be long)."""
    digest = hashlib.sha256((campaign_key or "").encode()).digest()[:6]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_id(token: str) -> str:
    """A short name of a token for the journal: it finds the token's message, reveals nothing."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenCodec:
    """Issues and verifies tokens with `keys` (the first signs), valid for `max_age` seconds."""

    def __init__(self, keys: list[bytes], clock: Clock, *, max_age: float) -> None:
        """Sign with keys[0]; accept any of `keys`."""
        if not keys:
            raise ValueError("at least one token key is needed")
        self.keys = keys
        self.clock = clock
        self.max_age = max_age

    def _mac(self, key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    @cached_property
    def _sealers(self) -> list[AESSIV]:
        """One AES-SIV cipher per configured key (the first seals), keys derived by HKDF."""
        return [
            AESSIV(HKDF(hashes.SHA256(), 64, salt=None, info=_SEALED_INFO).derive(key))
            for key in self.keys
        ]

    def issue(self, account_id: str, recipient: str, campaign: str) -> str:
        """A token for `recipient` of `account_id`'s campaign `campaign` (a campaign_tag)."""
        day = int(self.clock.now() // _DAY)
        fields = [account_id.encode(), recipient.encode(), campaign.encode(), str(day).encode()]
        sealed = self._sealers[0].encrypt(_SEP.join(fields), [_SEALED])
        return _b64(_SEALED + sealed)

    def _opened_fields(self, token: str) -> list[bytes] | None:
        """The fields of a token one of the keys sealed (or, version 1, signed), else None."""
        try:
            raw = _unb64(token)
        except (binascii.Error, ValueError):
            return None
        if raw[:1] == _SEALED:
            for sealer in self._sealers:
                try:
                    return sealer.decrypt(raw[1:], [_SEALED]).split(_SEP)
                except (InvalidTag, ValueError):
                    continue
            return None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not any(
            hmac.compare_digest(mac, self._mac(key, payload)) for key in self.keys
        ):
            return None
        fields = payload.split(_SEP)
        return fields[1:] if fields[0] == _VERSION else None

    def verify(self, token: str) -> Claim | None:
        """The token's claim if a key sealed it and it has not expired; else None."""
        fields = self._opened_fields(token)
        if fields is None or len(fields) != 4:  # noqa: PLR2004 - account, recipient, campaign, day
            return None
        try:
            account, recipient, campaign = (f.decode() for f in fields[:3])
            issued = int(fields[3]) * _DAY
        except (UnicodeDecodeError, ValueError):
            return None
        # Issued on a day: counting from that day's end keeps every token valid at least max_age.
        if self.clock.now() - issued > self.max_age + _DAY:
            return None
        return Claim(account, recipient, campaign, float(issued))

    def _short(self, purpose: bytes, recipient_id: int) -> str:
        ident = recipient_id.to_bytes(_TRACE_ID_BYTES, "big")
        mac = self._mac(self.keys[0], purpose + ident)[:_TRACE_MAC_BYTES]
        return base64.b32encode(ident + mac).decode("ascii").rstrip("=").lower()

    def _verify_short(self, purpose: bytes, token: str) -> int | None:
        text = token.strip().upper()
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _TRACE_ID_BYTES + _TRACE_MAC_BYTES:
            return None
        ident, mac = raw[:_TRACE_ID_BYTES], raw[_TRACE_ID_BYTES:]
        if not any(
            hmac.compare_digest(mac, self._mac(key, purpose + ident)[:_TRACE_MAC_BYTES])
            for key in self.keys
        ):
            return None
        return int.from_bytes(ident, "big")

    def trace(self, recipient_id: int) -> str:
        """A short token naming one spooled recipient (bounce address and trace header).

        Lower-case base32 of the id and a MAC: 29 characters, so `bounce+TOKEN` stays well
        inside the 64-character local part, and case-insensitive for mail systems that fold it.
        """
        return self._short(_TRACE, recipient_id)

    def verify_trace(self, token: str) -> int | None:
        """The recipient id of a trace token one of the keys signed; else None."""
        return self._verify_short(_TRACE, token)

    def unsubscribe_address(self, recipient_id: int) -> str:
        """The token of the `unsub+TOKEN` mailto address for one spooled recipient.

        Short and case-insensitive like the trace token (RFC 5321 limits a local part to 64
        octets; some mail systems fold its case), but under its own MAC domain: a bounce
        address or trace header is never an unsubscribe address.
        """
        return self._short(_UNSUB, recipient_id)

    def verify_unsubscribe_address(self, token: str) -> int | None:
        """The recipient id of an `unsub+TOKEN` token one of the keys signed; else None."""
        return self._verify_short(_UNSUB, token)

    def form_token(self, account_id: str, list_id: str) -> str:
        """A CSRF token for one served subscription form: its issue time and a MAC."""
        return self._timed(_FORM, account_id, list_id)

    def verify_form_token(self, token: str, account_id: str, list_id: str, max_age: float) -> bool:
        """Whether `token` was issued for this form within `max_age` seconds by one of the keys."""
        return self._verify_timed(token, max_age, _FORM, account_id, list_id)

    def terms_token(self, account_id: str, version: str) -> str:
        """The token of a link that accepts `version` of the terms of use for `account_id`."""
        return self._timed(_TERMS, account_id, version)

    def verify_terms_token(self, token: str, account_id: str, version: str) -> bool:
        """Whether `token` accepts `version` for `account_id` (within `max_age`)."""
        return self._verify_timed(token, self.max_age, _TERMS, account_id, version)

    def _timed(self, purpose: bytes, *fields: str) -> str:
        issued = str(int(self.clock.now()))
        payload = _SEP.join([purpose, *(f.encode() for f in fields), issued.encode()])
        return f"{issued}.{_b64(self._mac(self.keys[0], payload))}"

    def _verify_timed(self, token: str, max_age: float, purpose: bytes, *fields: str) -> bool:
        issued, _, mac_text = token.partition(".")
        if not (issued.isascii() and issued.isdigit()) or not mac_text:
            return False
        if not 0 <= self.clock.now() - int(issued) <= max_age:
            return False
        try:
            mac = _unb64(mac_text)
        except (binascii.Error, ValueError):
            return False
        payload = _SEP.join([purpose, *(f.encode() for f in fields), issued.encode()])
        return any(hmac.compare_digest(mac, self._mac(key, payload)) for key in self.keys)
