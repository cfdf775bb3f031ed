"""An SMTP session and envelope with what optin-relay knows of them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, Envelope, Session

if TYPE_CHECKING:
    import asyncio

    from relay.policy import Transaction
    from relay.tokens import Claim


@dataclass
class InboundParts:
    """The recipients of one transaction at the relay's own inbound addresses."""

    unsubscribes: list[Claim] = field(default_factory=list)  # unsub+TOKEN@
    complaint_boxes: list[str] = field(default_factory=list)  # fbl@, abuse@, postmaster@
    bounces: list[int] = field(default_factory=list)  # bounce+TOKEN@: spooled recipients' ids

    def __bool__(self) -> bool:
        """True when any recipient of the transaction is one of the relay's own addresses."""
        return bool(self.unsubscribes or self.complaint_boxes or self.bounces)


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
        self.tx: Transaction | None = None  # a customer's submission (after MAIL with AUTH)
        self.inbound = InboundParts()  # recipients at the relay's own addresses


def relay_session(server: SMTP) -> RelaySession:
    """The server's current session, with optin-relay's fields."""
    session = server.session
    if not isinstance(session, RelaySession):
        raise TypeError("no relay session")
    return session
