"""A capture sink: an SMTP server that writes every message it receives to a folder.

`optin-relay sink` is the upstream of the development setup (`make run`) and of the tests. It
delivers like a local MDA: one `.eml` file per recipient, with `Return-Path` and `Delivered-To`
prepended, written atomically (temporary file, then rename).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.logging import get_logger

if TYPE_CHECKING:
    from pathlib import Path

log = get_logger(__name__)


class SinkHandler:
    """aiosmtpd handler that stores each recipient's copy as a file."""

    def __init__(self, outbox: Path) -> None:
        """Write into `outbox` (created if missing)."""
        self.outbox = outbox
        outbox.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook naming
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        """Write one file per recipient; answer 250 only once all are on disk."""
        del server, session
        content: bytes = envelope.original_content or b""
        for rcpt in envelope.rcpt_tos:
            trace = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
            await asyncio.to_thread(self._write, trace.encode() + content)
        log.info("sink_received", mail_from=envelope.mail_from, recipients=envelope.rcpt_tos)
        return "250 2.0.0 Ok: captured"

    def _write(self, data: bytes) -> None:
        name = f"{time.time_ns()}-{secrets.token_hex(4)}.eml"
        tmp = self.outbox / f".{name}.tmp"
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(self.outbox / name)


async def start_sink(
    handler: object,
    host: str = "127.0.0.1",
    port: int = 0,
    **smtp_options: Any,  # noqa: ANN401
) -> tuple[asyncio.Server, int]:
    """Serve `handler` (a SinkHandler or a test's variant) on the running loop.

    `smtp_options` go to aiosmtpd's SMTP (for example `tls_context`, `authenticator`).
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler, hostname="sink.invalid", enable_SMTPUTF8=True, loop=loop, **smtp_options
        ),
        host,
        port,
    )
    bound = int(server.sockets[0].getsockname()[1])
    log.info("sink_started", address=f"{host}:{bound}", outbox=str(getattr(handler, "outbox", "")))
    return server, bound
