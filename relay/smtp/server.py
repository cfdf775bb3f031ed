"""SMTP ingress: aiosmtpd servers on the app's own event loop, with a thin handler.

The handler sends each recipient to the one that owns it: the relay's own inbound addresses to
`relay.smtp.inbound`, everything else to a customer's submission (`relay.smtp.submission`),
which only an authenticated account may make (never an open relay). The per-IP connection cap
and the failed-AUTH throttle live here, because they are properties of the SMTP connection.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import re
from asyncio import sslproto
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from relay.logging import get_logger
from relay.mail import dsnrequest
from relay.smtp import addresses
from relay.smtp.auth import SmtpAuth
from relay.smtp.inbound import InboundMail
from relay.smtp.replies import (
    REPLY_AUTH_REQUIRED,
    REPLY_NEED_RCPT,
    REPLY_TEMPFAIL,
    REPLY_THROTTLED,
    REPLY_TOO_MANY_CONNECTIONS,
    recipient_rejected,
    rejected,
)
from relay.smtp.session import RelayEnvelope, RelaySession, relay_session
from relay.smtp.submission import Submissions
from relay.storage.records import new_message_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.accounts.credentials import Credentials
    from relay.clock import Clock
    from relay.config import Listener
    from relay.feedback.intake import Feedback
    from relay.runtime import Runtime
    from relay.smtp.throttle import ConnectionLimiter, FailureThrottle
    from relay.storage.base import Store
    from relay.storage.records import NewMessage

log = get_logger(__name__)

# aiosmtpd's own replies that lack an enhanced status code (RFC 3463), and ours for them.
_REPLIES = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": (
        "500 5.5.2 Line too long: longer than this relay's smtp.max_line_length"
    ),
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": REPLY_NEED_RCPT,
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
}

# The path nearly every client sends: <dot-atom@domain>. It is read here at the cost of one
# regular expression; anything else (quoted local parts, address literals, comments, source
# routes, <>) goes to aiosmtpd's full RFC 5322 parser, which builds a class on every call.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>(?=\s|$)"
)


# What a reply line may not carry: control characters and lone surrogates (undecodable octets).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

_HOOK_NAMES: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def _hook_names(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attribute names of `cls` with one of `prefixes`, found once per class.

    aiosmtpd's SMTP constructor finds the verbs, AUTH mechanisms and handler hooks through dir()
    and inspect.getmembers(), which reads every attribute: for each connection. The protocol and
    handler classes answer dir() with only those names, so each connection reads only those.
    """
    key = (cls, prefixes)
    names = _HOOK_NAMES.get(key)
    if names is None:
        names = _HOOK_NAMES[key] = sorted(n for n in dir(cls) if n.startswith(prefixes))
    return names


# Command lines with the extensions' parameters (RFC 1869): SIZE (26) and SMTPUTF8 (10) on MAIL,
# as aiosmtpd counts them, and DSN: RET and ENVID (100) on MAIL, NOTIFY and ORCPT (500) on RCPT
# (RFC 3461 section 4).
MAIL_LINE_LIMIT = SMTP.command_size_limit + 26 + 10 + 100
RCPT_LINE_LIMIT = SMTP.command_size_limit + 500


class _LeanTLS(sslproto.SSLProtocol):
    """asyncio's TLS layer for STARTTLS with a 32 KiB read buffer instead of 256 KiB.

    asyncio allocates (and zeroes) `max_size` bytes per TLS connection for as long as it lives:
    256 KiB made an idle STARTTLS session cost about 287 KiB of RSS. A TLS record is at most
    16 KiB of plaintext, so 32 KiB still reads a whole record at a time.
    """

    max_size = 32 * 1024


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with optin-relay's connection cap and AUTH throttle."""

    def __init__(self, handler: IngressHandler, listener: Listener, **kwargs: Any) -> None:  # noqa: ANN401 - aiosmtpd's options
        """One protocol instance per connection on `listener`."""
        # aiosmtpd reads DATA lines (CRLF included) up to this; commands keep their own limits.
        self.line_length_limit = handler.runtime().config.smtp.max_line_length + 2
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps these limits in one dict for all connections and adds to them at
        # every EHLO; each connection has its own, set by `handle_EHLO`.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.relay_handler = handler
        self.listener = listener
        self._counted_ip: str | None = None
        self._refused = False
        self._handler_done = False  # aiosmtpd's task for the session has ended (see _release)
        self._released = False
        self.junk_commands = 0  # since the last accepted message (see _junk)
        self.dsn_params: str | None = None  # the DSN parameters of the MAIL or RCPT being read

    def __dir__(self) -> list[str]:
        """Its SMTP verbs and AUTH mechanisms: what aiosmtpd's constructor looks up by dir()."""
        return _hook_names(type(self), ("smtp_", "auth_"))

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    async def _junk(self) -> bool:
        """Count a junk command (NOOP, RSET, VRFY, HELP); True once over the limit (then closed).

        As Postfix's `smtpd_junk_command_limit`: the count starts again after each accepted
        message, so a session may live as long as it sends mail, not as long as it says NOOP.
        """
        self.junk_commands += 1
        if self.junk_commands <= self.relay_handler.runtime().config.smtp.junk_command_limit:
            return False
        session = self.relay_session()
        log.warning("junk_command_limit", session_id=session.id, client_ip=session.client_ip)
        await self.push("421 4.7.0 Error: too many commands without mail, closing the session")
        if self.transport is not None:
            self.transport.close()
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's verb
        """NOOP, counted as junk."""
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's verb
        """RSET, counted as junk."""
        if not await self._junk():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's verb
        """VRFY, counted as junk."""
        if not await self._junk():
            await super().smtp_VRFY(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's verb
        """HELP, counted as junk."""
        if not await self._junk():
            await super().smtp_HELP(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's verb
        """Refuse STARTTLS inside TLS, as Postfix does (RFC 3207 section 4.2)."""
        if self._tls_protocol is not None or self.listener.tls == "implicit":
            await self.push("554 5.5.1 Error: TLS already active")
            return
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        # As aiosmtpd's own STARTTLS, but with a lean TLS layer (see _LeanTLS).
        waiter = self.loop.create_future()
        self._tls_protocol = _LeanTLS(self.loop, self, self.tls_context, waiter, server_side=True)
        self._original_transport = self.transport
        assert self._original_transport is not None  # noqa: S101 - connected: narrowed for mypy
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport  # noqa: SLF001 - as aiosmtpd does
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException from error

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's verb
        """MAIL, with the DSN extension's RET and ENVID taken out for the handler."""
        arg = await self._take_dsn(arg, "FROM:", dsnrequest.MAIL_PARAMS)
        if arg is not None:
            await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's verb
        """RCPT, with the DSN extension's NOTIFY and ORCPT taken out for the handler."""
        arg = await self._take_dsn(arg, "TO:", dsnrequest.RCPT_PARAMS)
        if arg is not None:
            await super().smtp_RCPT(arg)

    async def _take_dsn(self, arg: str | None, keyword: str, names: tuple[str, ...]) -> str | None:
        """`arg` without its DSN parameters (kept in `dsn_params`); None when refused here.

        aiosmtpd knows no parameters but SIZE, BODY and SMTPUTF8 (555 for any other) and
        upper-cases them all, which would change an ENVID or ORCPT; so they are read here
        first, and the rest of the command goes on to aiosmtpd as the client sent it.
        """
        self.dsn_params = None
        session = self.session
        if not arg or session is None or not session.extended_smtp:
            return arg
        upper = arg.upper()
        if not any(f"{name}=" in upper for name in names):
            return arg  # the usual MAIL (SIZE=, BODY=) and RCPT: read once, by aiosmtpd
        path = self._strip_command_keyword(keyword, arg)
        if path is None:
            return arg
        address, params = self._getaddr(path)
        if not address or not params or not path.endswith(params):
            return arg  # aiosmtpd answers for the path
        try:
            self.dsn_params, others = dsnrequest.take(params.split(), names)
        except dsnrequest.DsnParamError as error:
            await self.push(error.reply)
            return None
        return " ".join([keyword, path[: len(path) - len(params)].rstrip(), *others])

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of MAIL FROM or RCPT TO and the rest (parameters), as aiosmtpd reads them."""
        match = _PLAIN_PATH.match(arg)
        if match is not None:
            address, rest = match.group(1), arg[match.end() :].lstrip(" \t")
            too_long = self.local_part_limit and address.rindex("@") > self.local_part_limit
            if not too_long and not rest.startswith("("):  # a comment: the parser skips it
                return address, rest
        try:
            return super()._getaddr(arg)
        except (AttributeError, IndexError, ValueError):
            # The email package's parser crashes on some malformed paths (`<0@[>`): that is a
            # malformed address (553 5.1.3), not a server failure (451 and a traceback).
            return None, None

    def relay_session(self) -> RelaySession:
        """The current session, with optin-relay's fields (a method: aiosmtpd inspects members)."""
        return relay_session(self)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the client against the per-IP cap, refusing it with 421 when over."""
        if self.transport is not None:
            # STARTTLS: aiosmtpd starts a new session (RFC 3207 4.2 discards what the client
            # said before); the client itself, and the listener's trust in it, stay the same.
            before = self.relay_session()
            super().connection_made(transport)
            after = self.relay_session()
            after.id, after.client_ip = before.id, before.client_ip
            after.account_id = self.listener.trusted_account
            return
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "unknown"
        if not self.relay_handler.limiter.acquire(ip):
            self._refused = True
            log.warning("connection_refused", client_ip=ip, reason="per_ip_limit")
            # A stream transport on every loop (uvloop's are not asyncio.WriteTransport
            # subclasses, so an isinstance test skipped the reply there).
            cast("asyncio.WriteTransport", transport).write(
                f"{REPLY_TOO_MANY_CONNECTIONS}\r\n".encode()
            )
            transport.close()
            return
        self._counted_ip = ip
        super().connection_made(transport)
        if self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._session_ended)
        session = self.relay_session()
        session.client_ip = ip
        session.account_id = self.listener.trusted_account
        tls = transport.get_extra_info("ssl_object") is not None
        log.info(
            "session_opened",
            session_id=session.id,
            client_ip=ip,
            listener=self.listener.address,
            tls=tls,
        )

    def connection_lost(self, error: Exception | None) -> None:
        """Release the client's slot under the per-IP cap."""
        if self._refused or self._released:  # a second call (aiosmtpd's TLS failure path)
            return
        if self._counted_ip is not None:
            self.relay_handler.limiter.release(self._counted_ip)
            log.info(
                "session_closed", session_id=self.relay_session().id, client_ip=self._counted_ip
            )
            self._counted_ip = None
        super().connection_lost(error)
        if self._handler_done:
            self._release()

    def _session_ended(self, task: asyncio.Task[None]) -> None:
        del task
        self._handler_done = True
        if self.transport is None:  # the connection is already lost
            self._release()

    def _release(self) -> None:
        """Drop what ties a finished connection to itself, so it is freed when it ends.

        aiosmtpd keeps, per connection, its verbs as bound methods, its session task (which
        ends holding the CancelledError, its traceback and frames), its cancelled timer, its
        streams and the TLS layer, each of which points back at the protocol: without this,
        every connection became about 60 objects of cyclic garbage (1,000 connections made
        70 ms pauses of the garbage collector, which stop every session).
        """
        self._released = True
        self._smtp_methods = {}
        self._auth_methods = {}
        self._handle_hooks = {}
        self._client_connected_cb = None
        self._handler_coroutine = None
        self._timeout_handle = None
        self._reader = self._writer = None  # type: ignore[assignment]
        self._tls_protocol = None
        self._original_transport = None

    def eof_received(self) -> bool | None:
        """Ignore EOF on a refused connection (never served) or a released one (see _release)."""
        if self._refused or self._released:
            return False
        result: bool | None = super().eof_received()
        return result

    async def push(self, status: str | bytes) -> None:
        """Send a reply, adding enhanced status codes to aiosmtpd's own replies.

        aiosmtpd echoes some of the client's text (`502 Could not VRFY ...`): octets that were
        not UTF-8 (kept as lone surrogates) or control characters become `?`, so an echo can
        neither fail to encode nor carry anything but printable text.
        """
        if isinstance(status, str):
            reply = _REPLIES.get(status, status)
            await super().push(_UNPRINTABLE.sub("?", reply))
        else:
            await super().push(status)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command naming
        """AUTH, refused with 421 (and the connection closed) once the client is throttled."""
        throttle = self.relay_handler.throttle
        session = self.relay_session()
        if throttle.blocked(session.client_ip):
            log.warning("auth_throttled", session_id=session.id, client_ip=session.client_ip)
            await self.push(REPLY_THROTTLED)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_AUTH(arg)
        if throttle.blocked(session.client_ip) and self.transport is not None:
            self.transport.close()


class IngressHandler(SmtpAuth):
    """The aiosmtpd handler: AUTH, then each command to the submission or the inbound mail."""

    def __dir__(self) -> list[str]:
        """Its hooks and AUTH mechanisms (see `_hook_names`)."""
        return _hook_names(type(self), ("handle_", "auth_"))

    def __init__(
        self,
        *,
        runtime: Callable[[], Runtime],
        store: Store,
        clock: Clock,
        limiter: ConnectionLimiter,
        throttle: FailureThrottle,
        on_spooled: Callable[[NewMessage], None],
        feedback: Feedback,
        credentials: Credentials,
    ) -> None:
        """Serve with the runtime in force at each command."""
        self.runtime = runtime
        self.credentials = credentials
        self.store = store
        self.limiter = limiter
        self.throttle = throttle
        self.submissions = Submissions(
            runtime=runtime, store=store, clock=clock, on_spooled=on_spooled
        )
        self.inbound = InboundMail(runtime=runtime, store=store, clock=clock, feedback=feedback)

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer PIPELINING (RFC 2920) and DSN (RFC 3461) besides aiosmtpd's own extensions.

        aiosmtpd reads commands one line at a time from its buffer and answers each in order, so
        a client may send MAIL, RCPT and DATA in one write; data after STARTTLS is discarded.
        """
        del envelope
        session.host_name = hostname
        # RFC 1869 section 4.1.2: each extension's parameters lengthen its commands' lines.
        server.command_size_limits.clear()
        server.command_size_limits["MAIL"] = MAIL_LINE_LIMIT
        server.command_size_limits["RCPT"] = RCPT_LINE_LIMIT
        *lines, last = responses
        return [*lines, "250-PIPELINING", "250-DSN", last]

    async def handle_MAIL(  # noqa: N802
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        """Authenticated senders only, then the mail stage.

        On `auth: optional` listeners unauthenticated clients get past MAIL too, but may then
        only address the relay's own inbound domain (never an open relay).
        """
        refused = addresses.refusal(address, smtputf8=envelope.smtp_utf8, recipient=False)
        if refused is not None:
            rejected("mail", refused[0], refused[1], client_ip=session.client_ip)
            return refused[0]
        runtime = self.runtime()
        account = runtime.config.account(session.account_id) if session.account_id else None
        message_id = new_message_id()
        structlog.contextvars.bind_contextvars(
            session_id=session.id, message_id=message_id, account_id=session.account_id
        )
        if account is None:
            if server.listener.auth != "optional":
                rejected("mail", REPLY_AUTH_REQUIRED, "auth_required", client_ip=session.client_ip)
                return REPLY_AUTH_REQUIRED
        else:
            listener = server.listener
            origin = {
                "listener": listener.address,
                "tls": session.ssl is not None or listener.tls == "implicit",
                "auth": account.username if session.authenticated else "trusted listener",
                "helo": session.host_name,
            }
            refusal = await self.submissions.mail(
                envelope,
                account,
                message_id,
                session.client_ip,
                address,
                origin=origin,
                dsn=server.dsn_params,
            )
            if refusal is not None:
                return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(  # noqa: N802
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """The relay's own addresses to the inbound mail; the rest to the submission."""
        del session
        refused = addresses.refusal(address, smtputf8=envelope.smtp_utf8, recipient=True)
        if refused is not None:
            recipient_rejected(refused[0], refused[1], address)
            return refused[0]
        inbound = self.runtime().config.inbound
        if inbound is not None and address.lower() == "postmaster":
            address = f"postmaster@{inbound.domain}"  # RFC 5321 4.5.1: accepted unqualified
        local, _, domain = address.rpartition("@")
        if inbound is not None and domain.lower() == inbound.domain:
            reply = await self.inbound.rcpt(envelope.inbound, address, local)
            if reply.startswith("250"):
                envelope.rcpt_tos.append(address)
            return reply
        if envelope.tx is None:
            reply = f"554 5.7.1 <{address}>: Relay access denied"
            recipient_rejected(reply, "relay_denied", address)
            return reply
        reply = await self.submissions.rcpt(envelope.tx, address, dsn=server.dsn_params)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(  # noqa: N802
        self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope
    ) -> str:
        """Take the message; an accepted one starts the session's junk-command count again."""
        reply = await self._data(server, session, envelope)
        if reply.startswith("250"):
            server.junk_commands = 0
        return reply

    async def _data(self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope) -> str:
        """The inbound mail's part first, then the submission's (each answers for itself)."""
        content: bytes = envelope.original_content or b""
        tx = envelope.tx
        if envelope.inbound:
            reply = await self.inbound.data(envelope.inbound, content)
            if tx is None or not tx.recipients or not reply.startswith("250"):
                return reply
        tls = session.ssl is not None or server.listener.tls == "implicit"
        return await self.submissions.data(session, envelope, content, tls=tls)

    async def handle_exception(self, error: Exception) -> str:
        """Log the failure with its traceback; tell the client only to try again.

        A TLS handshake that fails (a client that goes away in the middle of it, a protocol it
        does not speak) is the client's affair: a warning, no traceback; aiosmtpd closes it.
        """
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            log.warning("tls_handshake_failed", error=type(cause).__name__, detail=str(cause))
            return REPLY_TEMPFAIL
        log.error("smtp_exception", error=type(error).__name__, exc_info=error)
        return REPLY_TEMPFAIL


def _signature_once(function: Callable[..., object]) -> None:
    """Keep `function`'s signature on it, where `inspect.signature` looks first.

    aiosmtpd's constructor reads the EHLO hook's signature (its 4- or 5-argument form) for each
    connection: working it out again each time was a third of the cost of a connection's
    protocol object (28 of 80 us).
    """
    function.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]


_signature_once(IngressHandler.handle_EHLO)


async def start_listeners(
    handler: IngressHandler, listeners: list[Listener], *, reuse_port: bool = False
) -> list[asyncio.Server]:
    """Open one server per listener on the running loop (no aiosmtpd Controller thread)."""
    loop = asyncio.get_running_loop()
    servers = []
    for listener in listeners:

        def factory(listener: Listener = listener) -> RelaySMTP:
            runtime = handler.runtime()
            smtp = runtime.config.smtp
            return RelaySMTP(
                handler,
                listener,
                hostname=runtime.config.hostname,
                ident="optin-relay ESMTP",
                data_size_limit=smtp.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                tls_context=runtime.tls if listener.tls == "starttls" else None,
                auth_required=False,
                # Implicit TLS is encrypted from the first byte, which aiosmtpd cannot tell.
                auth_require_tls=not (listener.allow_insecure_auth or listener.tls == "implicit"),
                timeout=smtp.timeout,
                loop=loop,
            )

        implicit = handler.runtime().tls if listener.tls == "implicit" else None
        server = await loop.create_server(
            factory, listener.host, listener.port, ssl=implicit, reuse_port=reuse_port or None
        )
        servers.append(server)
        for sock in server.sockets:
            log.info(
                "listener_started",
                listener=listener.address,
                address=f"{sock.getsockname()[0]}:{sock.getsockname()[1]}",
                tls=listener.tls,
            )
    return servers
