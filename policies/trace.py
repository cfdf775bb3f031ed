"""Trace: each recipient's copy names itself, so bounces and complaints find their way back.

The envelope sender becomes `bounce+TOKEN@INBOUND_DOMAIN` (VERP): a DSN for the copy comes back
to the relay and names the recipient it is about. The same token goes into an `X-Optin-Trace`
header, which complaint reports usually enclose even when they redact the recipient. The token
is a MAC-protected id of the spooled recipient (see `TokenCodec.trace`); it cannot be forged.

Runs after every other render policy (the unsubscribe render shares one prepared template per
message, so the per-recipient field is added after it) and before DKIM signing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from relay.mail import markers
from relay.policy import CONTINUE, BasePolicy, PolicyServices, Verdict
from relay.tokens import token_id

if TYPE_CHECKING:
    from relay.policy import Rendering


class Settings(BaseModel):
    """`policies.trace`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bounce_address: bool = Field(
        default=True,
        description="rewrite the envelope sender to bounce+TOKEN@ the inbound domain (VERP)",
    )


class Policy(BasePolicy):
    """Adds the trace header and the bounce address to every copy of a relayed message."""

    name = "trace"
    required = True
    after = ("*",)
    before = ("dkim",)  # the trace header is signed

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Issue tokens with the runtime's keys; bounces go to the inbound domain."""
        self.settings = settings
        self.tokens = services.tokens
        inbound = services.config.inbound
        self.inbound = inbound.domain if inbound is not None else None

    async def on_render(self, rendering: Rendering) -> Verdict:
        """Prepend the trace field; point the envelope sender at the relay (never for DSNs)."""
        if rendering.kind == "dsn" or rendering.recipient_id <= 0:
            return CONTINUE
        token = self.tokens.trace(rendering.recipient_id)
        unchanged = rendering.content is rendering.original  # render policies replace, never edit
        rendering.content = markers.trace_field(token) + rendering.content
        if unchanged:
            # A field added on top breaks no signature: DKIM must not see a rewritten message.
            rendering.original = rendering.content
        if self.settings.bounce_address and self.inbound and rendering.mail_from:
            rendering.mail_from = markers.bounce_address(token, self.inbound)
        rendering.notes["trace"] = {"token_id": token_id(token), "mail_from": rendering.mail_from}
        return CONTINUE
