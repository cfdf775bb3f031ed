"""SMTP AUTH (PLAIN, LOGIN) against the configured accounts; failures feed the throttle.

aiosmtpd calls handler methods named `auth_<MECHANISM>` instead of its own: the ingress
handler takes them from `SmtpAuth`.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from relay.logging import get_logger
from relay.smtp.replies import REPLY_THROTTLED
from relay.smtp.session import relay_session

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.accounts.credentials import Credentials
    from relay.runtime import Runtime
    from relay.smtp.throttle import FailureThrottle

log = get_logger(__name__)


class SmtpAuth:
    """The AUTH mechanisms, checked against the runtime's accounts.

    Each check takes its client address's turn in the throttle (`FailureThrottle.turn`), so at
    most `auth_failure_limit` guesses per window are ever verified, however many arrive at once.
    """

    runtime: Callable[[], Runtime]
    throttle: FailureThrottle
    credentials: Credentials

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """AUTH PLAIN (RFC 4616), initial response or challenge."""
        blob = await _response(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:  # noqa: PLR2004 - authzid NUL authcid NUL passwd
            await server.push("501 5.5.2 Cannot split the AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, "PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """AUTH LOGIN, which many CRMs speak exclusively."""
        username = await _response(server, args, server.AuthLoginUsernameChallenge)
        if username is None:
            return AuthResult(success=False, handled=True)
        password = await _response(server, [], server.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(server, "LOGIN", username, password)

    async def _check(
        self, server: SMTP, mechanism: str, raw_user: bytes, raw_password: bytes
    ) -> AuthResult:
        session = relay_session(server)
        username = raw_user.decode("utf-8", "replace")[:128]
        async with self.throttle.turn(session.client_ip):
            # The block is checked and the failure recorded around each verification in turn,
            # so simultaneous guesses from one address cannot all pass the check first.
            if self.throttle.blocked(session.client_ip):
                log.warning("auth_throttled", session_id=session.id, client_ip=session.client_ip)
                return AuthResult(success=False, handled=False, message=REPLY_THROTTLED)
            account = None
            try:
                password = raw_password.decode("utf-8")
            except UnicodeDecodeError:
                password = None
            if password is not None:
                config = self.runtime().config
                account = await self.credentials.authenticate(config, username, password)
            if account is None:
                self.throttle.record(session.client_ip)
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


async def _response(server: SMTP, args: list[str], challenge: str) -> bytes | None:
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
