"""The upstream MTA: a pool of persistent SMTP client connections (the only SMTP client here).

`Upstream` is the seam the delivery workers use; `SmtpUpstream` speaks SMTP through aiosmtplib.
Every foreign exception is turned into a `SendResult` here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import aiosmtplib
import aiosmtplib.protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.config import UpstreamConfig

# aiosmtplib readies every message for DATA with two regular-expression passes over all of it:
# line ends made CRLF (a substitution for every CRLF already there), then dot-stuffing with a
# multiline anchor tried at every byte. For a 50 KB newsletter copy that was 43 % of the
# delivery's CPU. The relay hands it messages whose line ends are already CRLF (the render and
# DKIM make them so), so the two steps are swapped, where this version of aiosmtplib has them,
# for equivalents that give the same bytes for every input (tests/test_upstream.py checks it):
# the line ends are left alone when no bare CR or LF is found, and the dot-stuffing pattern
# starts with its literal dot, which the regular-expression engine finds by a fast scan.
PERIOD_AT_LINE_START = re.compile(rb"\.(?<=^\.)", re.MULTILINE)


def _line_endings_without_a_pass(
    library: Callable[[bytes], bytes],
) -> Callable[[bytes], bytes]:
    def normalize(message: bytes) -> bytes:
        """The library's line-end normalisation, skipped when there is no bare CR or LF."""
        rest = message.replace(b"\r\n", b"")
        if b"\r" in rest or b"\n" in rest:
            return library(message)
        return message if message.endswith(b"\r\n") else message + b"\r\n"

    return normalize


LIBRARY_LINE_ENDINGS = getattr(aiosmtplib.protocol, "normalize_message_line_endings", None)
LIBRARY_PERIOD = getattr(aiosmtplib.protocol, "PERIOD_REGEX", None)
if LIBRARY_LINE_ENDINGS is not None and LIBRARY_PERIOD is not None:
    aiosmtplib.protocol.normalize_message_line_endings = _line_endings_without_a_pass(  # type: ignore[assignment] # same signature
        LIBRARY_LINE_ENDINGS
    )
    aiosmtplib.protocol.PERIOD_REGEX = PERIOD_AT_LINE_START

Outcome = Literal["delivered", "transient", "permanent"]
_CONNECTION_ERRORS = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)
_SERVICE_CLOSING = 421


@dataclass(frozen=True)
class SendResult:
    """What the upstream said about one recipient's copy."""

    outcome: Outcome
    reply: str

    @property
    def code(self) -> int | None:
        """The reply's 3-digit code, if the upstream gave one."""
        head = self.reply[:3]
        return int(head) if head.isascii() and head.isdigit() else None


class Upstream(Protocol):
    """Something that takes one message for one recipient."""

    async def send(self, mail_from: str, recipient: str, content: bytes) -> SendResult:
        """Hand `content` over for `recipient`."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...

    async def accepts_8bit(self) -> bool:
        """Whether 8-bit content may be sent as it is (the upstream offers 8BITMIME)."""
        ...


def _classify(code: int, message: str) -> SendResult:
    reply = f"{code} {message}".strip()
    if 200 <= code < 300:  # noqa: PLR2004
        return SendResult("delivered", reply)
    if 400 <= code < 500:  # noqa: PLR2004
        return SendResult("transient", reply)
    return SendResult("permanent", reply)


class SmtpUpstream:
    """Up to `connections` persistent connections to the configured MTA, reused across sends."""

    def __init__(self, config: UpstreamConfig, local_hostname: str) -> None:
        """Connect lazily, on the first send that needs a connection."""
        self.config = config
        self.local_hostname = local_hostname
        self._slots: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
        for _ in range(config.connections):
            self._slots.put_nowait(None)
        self._eight_bit: bool | None = None  # learnt from the upstream's EHLO

    async def accepts_8bit(self) -> bool:
        """Whether the upstream offers 8BITMIME; connects once to find out if nobody has yet."""
        if self._eight_bit is None:
            client = await self._slots.get()
            try:
                if client is None or not client.is_connected:
                    client = self._client()
                    try:
                        await client.connect()
                        self._eight_bit = client.supports_extension("8bitmime")
                    except (*_CONNECTION_ERRORS, ssl.SSLError, aiosmtplib.SMTPException):
                        await _close(client)
                        client = None
                        return True  # unknown: the send will fail and be retried anyway
            finally:
                self._slots.put_nowait(client)
        return self._eight_bit is not False

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.config
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            local_hostname=self.local_hostname,
            timeout=cfg.timeout,
            start_tls={"none": False, "opportunistic": None, "required": True}[cfg.tls],
            validate_certs=cfg.tls == "required" and cfg.verify_certificate,
            cert_bundle=str(cfg.ca_file) if cfg.ca_file else None,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
        )

    async def send(self, mail_from: str, recipient: str, content: bytes) -> SendResult:
        """Send over a pooled connection; a stale pooled connection is replaced once."""
        client = await self._slots.get()
        try:
            for _ in range(2):
                reused = client is not None and client.is_connected
                if not reused:
                    await _close(client)
                    client = self._client()
                    try:
                        await client.connect()
                        self._eight_bit = client.supports_extension("8bitmime")
                    except aiosmtplib.SMTPResponseException as exc:
                        # A refused greeting, STARTTLS or AUTH is about our link to our own MTA,
                        # not about the message: retry (as Postfix's smtp_sasl_auth_soft_bounce).
                        await _close(client)
                        client = None
                        return SendResult("transient", f"{exc.code} {exc.message}".strip())
                    except (*_CONNECTION_ERRORS, ssl.SSLError, aiosmtplib.SMTPException) as exc:
                        await _close(client)
                        client = None
                        return SendResult("transient", f"connection failed: {exc}")
                assert client is not None  # noqa: S101 - narrowed for the type checker
                try:
                    return await self._transaction(client, mail_from, recipient, content)
                except _CONNECTION_ERRORS as exc:
                    await _close(client)
                    client = None
                    if not reused:
                        return SendResult("transient", f"connection lost: {exc}")
                except ValueError as exc:
                    # aiosmtplib refuses a path it cannot put on a command line. The copy can
                    # never go out; the connection, whose state is not known, is not reused.
                    client.close()
                    client = None
                    return SendResult("permanent", f"553 5.1.3 {exc}")
                except BaseException:
                    client.close()  # an unknown state: never reused (the next send reconnects)
                    client = None
                    raise
            return SendResult("transient", "connection lost twice")
        finally:
            self._slots.put_nowait(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, mail_from: str, recipient: str, content: bytes
    ) -> SendResult:
        options = []
        if not content.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (mail_from + recipient).isascii():
            options.append("SMTPUTF8")
        try:
            _, message = await client.sendmail(
                mail_from, [recipient], content, mail_options=options
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            return _classify(refused.code, refused.message)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == _SERVICE_CLOSING:
                client.close()
            return _classify(exc.code, exc.message)
        except aiosmtplib.SMTPNotSupported as exc:
            return SendResult("permanent", f"550 5.6.7 {exc}")
        return SendResult("delivered", f"250 {message}".strip())

    async def close(self) -> None:
        """Say QUIT on every idle connection."""
        while not self._slots.empty():
            await _close(self._slots.get_nowait())


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None or not client.is_connected:
        return
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        await asyncio.wait_for(client.quit(), 5)
    client.close()
