"""SMTP ingress: aiosmtpd servers on the app's own event loop, with a thin handler.

MAIL, RCPT and DATA each run the policy pipeline's stage; DATA commits the message to the spool
and only then answers 250. Authentication, the per-IP connection cap and the failed-AUTH throttle
live here too, because they are properties of the SMTP session.
"""

from __future__ import annotations

import asyncio
import binascii
import re
import secrets
from base64 import b64decode
from email import policy as email_policy
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session

from relay.accounts.auth import authenticate
from relay.clock import to_datetime
from relay.consent.optout import mailto_claim, unsubscribe
from relay.errors import StoreError
from relay.feedback.intake import verify_bounce_token
from relay.logging import get_logger
from relay.mail.campaign import campaign_key
from relay.metrics import MESSAGES_ACCEPTED, REJECTIONS
from relay.policy import Continue, Submission, Transaction
from relay.storage.base import NewMessage, new_message_id

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.accounts.stats import StatsRecorder
    from relay.clock import Clock
    from relay.config import Listener
    from relay.feedback.intake import Feedback, Source
    from relay.runtime import Runtime
    from relay.smtp.throttle import ConnectionLimiter, FailureThrottle
    from relay.storage.base import Store
    from relay.tokens import Claim

log = get_logger(__name__)

STORE_TIMEOUT = 30.0
_UNSAFE = re.compile(r"[^\x21-\x7e]")
# aiosmtpd's own replies that lack an enhanced status code (RFC 3463), and ours for them.
_REPLIES = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
}
REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_THROTTLED = "421 4.7.0 Too many failed authentication attempts, try again later"
REPLY_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address, try again later"
REPLY_TEMPFAIL = "451 4.3.0 Temporary local problem, try again later"
# The relay's own complaint mailboxes at the inbound domain (postmaster: RFC 5321 section 4.5.1).
COMPLAINT_BOXES = frozenset({"fbl", "abuse", "postmaster"})


class RelaySession(Session):
    """An SMTP session with what optin-relay knows about its client."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """A session before the client has said anything."""
        super().__init__(loop)
        self.id = secrets.token_hex(6)
        self.client_ip = ""
        self.account_id: str | None = None
        self._legacy_login: object = None

    # aiosmtpd sets this on every successful AUTH and warns through its deprecated property.
    @property
    def login_data(self) -> object:
        """Unused legacy field of aiosmtpd."""
        return self._legacy_login

    @login_data.setter
    def login_data(self, value: object) -> None:
        self._legacy_login = value


class RelayEnvelope(Envelope):
    """An envelope carrying the transaction the policies see."""

    def __init__(self) -> None:
        """An empty envelope."""
        super().__init__()
        self.tx: Transaction | None = None
        self.unsubscribes: list[Claim] = []  # mail to unsub+TOKEN@ the inbound domain
        self.complaint_boxes: list[str] = []  # mail to fbl@, abuse@, postmaster@
        self.bounces: list[int] = []  # mail to bounce+TOKEN@: the spooled recipients' ids


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP protocol with optin-relay's connection cap and AUTH throttle."""

    def __init__(self, handler: IngressHandler, listener: Listener, **kwargs: Any) -> None:  # noqa: ANN401 - aiosmtpd's options
        """One protocol instance per connection on `listener`."""
        super().__init__(handler, **kwargs)
        self.relay_handler = handler
        self.listener = listener
        self._counted_ip: str | None = None
        self._refused = False

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def relay_session(self) -> RelaySession:
        """The current session, with optin-relay's fields (a method: aiosmtpd inspects members)."""
        session = self.session
        if not isinstance(session, RelaySession):
            raise TypeError("no relay session")
        return session

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
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(f"{REPLY_TOO_MANY_CONNECTIONS}\r\n".encode())
            transport.close()
            return
        self._counted_ip = ip
        super().connection_made(transport)
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
        if self._refused:
            return
        if self._counted_ip is not None:
            self.relay_handler.limiter.release(self._counted_ip)
            log.info(
                "session_closed", session_id=self.relay_session().id, client_ip=self._counted_ip
            )
            self._counted_ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """Ignore EOF on a refused connection (it was never served)."""
        if self._refused:
            return False
        result: bool | None = super().eof_received()
        return result

    async def push(self, status: str | bytes) -> None:
        """Send a reply, adding enhanced status codes to aiosmtpd's own replies."""
        if isinstance(status, str):
            await super().push(_REPLIES.get(status, status))
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


def received_header(
    *,
    helo: str | None,
    client_ip: str,
    hostname: str,
    protocol: str,
    message_id: str,
    now: float,
) -> bytes:
    """The trace header this relay prepends (RFC 5321 section 4.4)."""
    helo_text = _UNSAFE.sub("", helo or "unknown")[:255] or "unknown"
    address = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    return (
        f"Received: from {helo_text} ([{address}])\r\n"
        f"\tby {hostname} (optin-relay) with {protocol} id {message_id};\r\n"
        f"\t{format_datetime(to_datetime(now))}\r\n"
    ).encode("ascii")


class IngressHandler:
    """The aiosmtpd handler: AUTH, the policy stages, and the spool commit."""

    def __init__(
        self,
        *,
        runtime: Callable[[], Runtime],
        store: Store,
        clock: Clock,
        limiter: ConnectionLimiter,
        throttle: FailureThrottle,
        on_spooled: Callable[[], None],
        feedback: Feedback,
        stats: StatsRecorder,
    ) -> None:
        """Serve with the runtime in force at each command."""
        self.runtime = runtime
        self.store = store
        self.clock = clock
        self.limiter = limiter
        self.throttle = throttle
        self.on_spooled = on_spooled
        self.feedback = feedback
        self.stats = stats

    # --- AUTH (aiosmtpd calls handler methods named auth_<MECHANISM> instead of its own) ---

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """AUTH PLAIN (RFC 4616), initial response or challenge."""
        blob = await _response(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:  # noqa: PLR2004 - authzid NUL authcid NUL passwd
            await server.push("501 5.5.2 Cannot split the AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """AUTH LOGIN, which many CRMs speak exclusively."""
        username = await _response(server, args, server.AuthLoginUsernameChallenge)
        if username is None:
            return AuthResult(success=False, handled=True)
        password = await _response(server, [], server.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(server, "LOGIN", username, password)

    async def _check(
        self, server: RelaySMTP, mechanism: str, raw_user: bytes, raw_password: bytes
    ) -> AuthResult:
        session = server.relay_session()
        username = raw_user.decode("utf-8", "replace")[:128]
        account = None
        try:
            password = raw_password.decode("utf-8")
        except UnicodeDecodeError:
            password = None
        if password is not None:
            account = await authenticate(self.runtime().config, username, password)
        if account is not None:
            session.account_id = account.id
            log.info(
                "auth_succeeded",
                session_id=session.id,
                client_ip=session.client_ip,
                mechanism=mechanism,
                username=username,
                account_id=account.id,
            )
            return AuthResult(success=True, handled=False, auth_data=account.id)
        self.throttle.record(session.client_ip)
        log.warning(
            "auth_failed",
            session_id=session.id,
            client_ip=session.client_ip,
            mechanism=mechanism,
            username=username,
        )
        if self.throttle.blocked(session.client_ip):
            log.warning("auth_throttled", session_id=session.id, client_ip=session.client_ip)
            return AuthResult(success=False, handled=False, message=REPLY_THROTTLED)
        return AuthResult(success=False, handled=False)

    # --- the mail transaction ---

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
        runtime = self.runtime()
        account = runtime.config.account(session.account_id) if session.account_id else None
        message_id = new_message_id()
        structlog.contextvars.bind_contextvars(
            session_id=session.id, message_id=message_id, account_id=session.account_id
        )
        if account is None:
            if server.listener.auth == "optional":
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return "250 2.1.0 Sender ok"
            _rejected("mail", REPLY_AUTH_REQUIRED, "auth_required", client_ip=session.client_ip)
            return REPLY_AUTH_REQUIRED
        tx = Transaction(message_id, account, address, session.client_ip)
        decision = await runtime.pipeline.mail(tx)
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            _rejected("mail", reply, decision.verdict.rule, mail_from=address)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.tx = tx
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(  # noqa: N802
        self,
        server: RelaySMTP,
        session: RelaySession,
        envelope: RelayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """The recipient limit, then the rcpt stage."""
        del server, session
        tx = envelope.tx
        runtime = self.runtime()
        inbound = runtime.config.inbound
        local, _, domain = address.rpartition("@")
        if inbound is not None and domain.lower() == inbound.domain:
            return await self._inbound_rcpt(runtime, envelope, address, local)
        if tx is None:
            reply = f"554 5.7.1 <{address}>: Relay access denied"
            _recipient_rejected(reply, "relay_denied", address)
            return reply
        if len(tx.recipients) >= runtime.config.smtp.max_recipients:
            reply = "452 4.5.3 Too many recipients"
            _recipient_rejected(reply, "max_recipients", address)
            return reply
        decision = await runtime.pipeline.rcpt(tx, address)
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            _recipient_rejected(reply, decision.verdict.rule, address)
            self.stats.count(tx.account.id, "refused")
            return reply
        tx.recipients.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    async def _inbound_rcpt(  # noqa: PLR0911 - one return per kind of address and outcome
        self, runtime: Runtime, envelope: RelayEnvelope, address: str, local: str
    ) -> str:
        """The relay's own addresses, open to anyone.

        unsub+TOKEN (RFC 2369 mailto), bounce+TOKEN (DSNs to the VERP envelope sender) and the
        complaint mailboxes fbl@, abuse@ and postmaster@.
        """
        lower = local.lower()
        if lower in COMPLAINT_BOXES:
            envelope.complaint_boxes.append(lower)
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Complaint address ok"
        if lower.startswith("bounce+"):
            recipient_id = verify_bounce_token(runtime.tokens, local)
            if recipient_id is None:
                reply = f"550 5.1.1 <{address}>: invalid bounce address"
                _recipient_rejected(reply, "inbound_invalid_token", address)
                return reply
            envelope.bounces.append(recipient_id)
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Bounce address ok"
        if lower.startswith("unsub+"):
            try:
                claim = await mailto_claim(self.store, runtime.tokens, local[len("unsub+") :])
            except StoreError as exc:
                log.error("unsubscribe_failed", method="mailto", error=str(exc))
                _recipient_rejected(REPLY_TEMPFAIL, "unsubscribe_store", address)
                return REPLY_TEMPFAIL
            if claim is None:
                reply = f"550 5.1.1 <{address}>: invalid or expired unsubscribe address"
                _recipient_rejected(reply, "inbound_invalid_token", address)
                return reply
            envelope.unsubscribes.append(claim)
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Unsubscribe address ok"
        reply = f"550 5.1.1 <{address}>: no such inbound address"
        _recipient_rejected(reply, "inbound_unknown", address)
        return reply

    async def handle_DATA(  # noqa: N802, PLR0911 - one return per outcome
        self, server: RelaySMTP, session: RelaySession, envelope: RelayEnvelope
    ) -> str:
        """Inbound unsubscribes, then the data stage, the durable spool commit, then 250."""
        tx = envelope.tx
        runtime = self.runtime()
        if envelope.unsubscribes:
            try:
                for claim in envelope.unsubscribes:
                    await unsubscribe(
                        self.store, runtime.config, claim, method="mailto", now=self.clock.now()
                    )
            except StoreError as exc:
                log.error("unsubscribe_failed", method="mailto", error=str(exc))
                _rejected("data", REPLY_TEMPFAIL, "unsubscribe_store")
                return REPLY_TEMPFAIL
            if tx is None or not tx.recipients:
                return "250 2.0.0 Unsubscribe recorded"
        content: bytes = envelope.original_content or b""
        if envelope.complaint_boxes or envelope.bounces:
            reply = await self._feedback(envelope, content)
            if tx is None or not tx.recipients or not reply.startswith("250"):
                return reply
        if tx is None or not tx.recipients:
            return "503 5.5.1 Error: need RCPT command"
        # compat32: raw header strings; the default policy builds a class per header read.
        headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(content)
        campaign = campaign_key(headers, content)
        decision = await runtime.pipeline.data(tx, Submission(content, headers, campaign))
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            _rejected("data", reply, decision.verdict.rule)
            self.stats.count(tx.account.id, "refused", len(tx.recipients))
            return reply
        now = self.clock.now()
        tls = session.ssl is not None or server.listener.tls == "implicit"
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if session.authenticated else "")
        trace = received_header(
            helo=session.host_name,
            client_ip=session.client_ip,
            hostname=runtime.config.hostname,
            protocol=protocol,
            message_id=tx.message_id,
            now=now,
        )
        message = NewMessage(
            id=tx.message_id,
            account_id=tx.account.id,
            mail_from=tx.mail_from,
            recipients=tuple(tx.recipients),
            content=trace + content,
            received_at=now,
            campaign=campaign,
        )
        try:
            await asyncio.wait_for(self.store.spool(message), STORE_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            log.error("spool_failed", error=str(exc) or type(exc).__name__)
            _rejected("data", REPLY_TEMPFAIL, "spool")
            return REPLY_TEMPFAIL
        MESSAGES_ACCEPTED.inc()
        log.info(
            "message_accepted",
            size=len(message.content),
            recipient_count=len(message.recipients),
            mail_from=message.mail_from,
        )
        self.on_spooled()
        return f"250 2.0.0 Ok: queued as {tx.message_id}"

    async def _feedback(self, envelope: RelayEnvelope, content: bytes) -> str:
        """Act on a DSN or complaint report mailed to the relay, before answering 250.

        A malformed feedback report is refused (RFC 6650 section 4.5 still wants unknown
        feedback types accepted); anything the store cannot take now is deferred (4xx).
        """
        try:
            for recipient_id in envelope.bounces:
                await self.feedback.bounce(content, recipient_id)
            if envelope.complaint_boxes:
                source: Source = "fbl" if "fbl" in envelope.complaint_boxes else "abuse"
                result = await self.feedback.complaint(content, source=source, trusted=False)
                if result.outcome == "malformed":
                    reply = f"550 5.6.0 Malformed feedback report: {result.cause}"
                    _rejected("data", reply, "complaint_malformed")
                    return reply
        except StoreError as exc:
            log.error("feedback_failed", error=str(exc))
            _rejected("data", REPLY_TEMPFAIL, "feedback_store")
            return REPLY_TEMPFAIL
        return "250 2.0.0 Feedback recorded"

    async def handle_exception(self, error: Exception) -> str:
        """Log the failure with its traceback; tell the client only to try again."""
        log.error("smtp_exception", error=type(error).__name__, exc_info=error)
        return REPLY_TEMPFAIL


async def _response(server: RelaySMTP, args: list[str], challenge: str) -> bytes | None:
    """The client's AUTH data: the initial response in `args`, else the answer to `challenge`.

    None when the client aborted or sent bad base64 (the reply has then been sent).
    """
    if len(args) > 1:
        try:
            return b64decode(args[1], validate=True)
        except (binascii.Error, ValueError):
            await server.push("501 5.5.2 Cannot decode base64")
            return None
    answer = await server.challenge_auth(challenge)
    return None if answer is MISSING else bytes(answer)


def _rejected(stage: str, reply: str, rule: str, **fields: object) -> None:
    REJECTIONS.labels(stage, rule).inc()
    log.info("message_rejected", stage=stage, code=int(reply[:3]), rule=rule, reply=reply, **fields)


def _recipient_rejected(reply: str, rule: str, recipient: str) -> None:
    REJECTIONS.labels("rcpt", rule).inc()
    log.info(
        "recipient_rejected",
        stage="rcpt",
        code=int(reply[:3]),
        rule=rule,
        reply=reply,
        recipient=recipient,
    )


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
