"""DKIM: every message leaves signed by its From domain, as the very last step of the render.

The copy is first put in its wire form (`relay.mail.wire`: CRLF, lines of at most 998 octets,
7-bit for an upstream without 8BITMIME), so the signature covers exactly what is sent. Signatures
the sender added are removed when the relay's rewriting changed the message (they could only
fail), unless `keep_broken_signatures` is set. Without a key for the From domain the
message is deferred (`missing_key: defer`, fail closed), refused (`reject`) or relayed unsigned
(`relay_unsigned`). DSNs from the relay itself are signed when its own domain has a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay.logging import get_logger
from relay.mail.headers import drop_fields, from_domain
from relay.mail.wire import wire_form
from relay.policy import CONTINUE, BasePolicy, Defer, PolicyServices, Reject, Verdict

if TYPE_CHECKING:
    from relay.policy import Rendering

log = get_logger(__name__)
_DKIM_FIELDS = frozenset({b"dkim-signature"})


class Settings(BaseModel):
    """`policies.dkim`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    missing_key: Literal["defer", "relay_unsigned", "reject"] = Field(
        default="defer", description="what happens to mail whose From domain has no key"
    )
    keep_broken_signatures: bool = Field(
        default=False, description="keep the sender's signatures even when rewriting broke them"
    )


def strip_signatures(content: bytes) -> tuple[bytes, int]:
    """The message without its DKIM-Signature fields, and how many there were."""
    return drop_fields(content, _DKIM_FIELDS)


class Policy(BasePolicy):
    """Signs each recipient's copy with every key of its From domain."""

    name = "dkim"
    required = True
    after = ("*",)  # signing covers every change made before it

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Sign with the runtime's keys."""
        self.settings = settings
        self.signer = services.signer
        self.hostname = services.config.hostname

    async def on_render(self, rendering: Rendering) -> Verdict:
        """Put the copy in its wire form, remove broken signatures, then sign (the last step)."""
        # Sign exactly what goes on the wire: CRLF, short lines, 7-bit where the upstream says so.
        content = wire_form(rendering.content, seven_bit=rendering.seven_bit)
        removed = 0
        if (
            rendering.original
            and content != rendering.original
            and not self.settings.keep_broken_signatures
        ):
            content, removed = strip_signatures(content)
            if removed:
                log.info(
                    "dkim_signature_removed",
                    message_id=rendering.message_id,
                    recipient=rendering.recipient,
                    count=removed,
                )
        domain = from_domain(content)
        rendering.notes["dkim"] = {"removed": removed, "signed": None}
        if self.signer is None or domain is None or not self.signer.has_key(domain):
            rendering.content = content
            if rendering.kind == "dsn" or self.settings.missing_key == "relay_unsigned":
                return CONTINUE
            text = f"No DKIM key for the From domain {domain or '(none)'}"
            if self.settings.missing_key == "reject":
                return Reject(text, "dkim.missing_key", 550, "5.7.1")
            return Defer(text, "dkim.missing_key", 451, "4.7.5")
        rendering.content = self.signer.sign(content, domain)
        rendering.notes["dkim"] = {"removed": removed, "signed": domain}
        return CONTINUE
