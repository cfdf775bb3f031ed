"""Every marketing message carries a working unsubscribe: headers and a visible footer.

`stream: marketing` accounts: every message. `stream: transactional` accounts are exempt until
one broadcast of theirs (one campaign key) passes `mandatory_after` recipients within `window`;
from then on every message of that account gets it too.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay.logging import get_logger
from relay.mail import markers
from relay.mail.branding import footer
from relay.mail.render import Template, fill, list_unsubscribe_headers, prepare
from relay.policy import CONTINUE, BasePolicy, PolicyServices, Verdict
from relay.tokens import campaign_tag, token_id

if TYPE_CHECKING:
    from relay.configaccounts import Account
    from relay.policy import Rendering, Submission, Transaction

log = get_logger(__name__)
MANDATORY_FLAG = "mandatory_unsubscribe"
_PLACEHOLDER = f"optin-relay-url-{secrets.token_hex(8)}"
_TEMPLATES = 16  # messages being delivered at once, more or less
_TEMPLATE_MAX_BYTES = 4 * 1024 * 1024  # larger messages are prepared per recipient


class Settings(BaseModel):
    """`policies.unsubscribe`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: Literal["account", "global"] = Field(
        default="account", description="what an unsubscribe suppresses"
    )
    mandatory_after: Annotated[int, Field(ge=1, le=100)] = Field(
        default=100, description="broadcast size that ends a transactional account's exemption"
    )


class Policy(BasePolicy):
    """Adds List-Unsubscribe, List-Unsubscribe-Post and the footer to each recipient's copy."""

    name = "unsubscribe"
    required = True
    after = ("broadcast",)  # reads tx.campaign_recipients

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Sign links with the runtime's token codec."""
        self.settings = settings
        self.store = services.store
        self.clock = services.clock
        self.tokens = services.tokens
        config = services.config
        self.public_url = config.web.public_url or ""
        self.inbound = config.inbound.domain if config.inbound else None
        self._templates: OrderedDict[tuple[str, str], Template] = OrderedDict()
        self._mandatory: set[str] = set()

    async def on_data(self, tx: Transaction, submission: Submission) -> Verdict:
        """A transactional account's broadcast past `mandatory_after` makes injection mandatory.

        The broadcast policy counted the campaign's recipients over `limits.broadcast_window`.
        """
        account = tx.account
        if account.stream != "transactional":
            return CONTINUE
        total = tx.campaign_recipients
        if total > self.settings.mandatory_after:
            reason = f"campaign {submission.campaign} reached {total} recipients"
            if await self.store.set_flag(
                account.id, MANDATORY_FLAG, reason=reason, now=self.clock.now()
            ):
                log.warning(
                    "unsubscribe_made_mandatory",
                    account_id=account.id,
                    campaign=submission.campaign,
                    recipients=total,
                    threshold=self.settings.mandatory_after,
                )
        return CONTINUE

    def _template(self, message_id: str, account: Account, content: bytes) -> Template:
        """The message prepared once for all its recipients (parsing is the costly part)."""
        key = (message_id, account.id)
        template = self._templates.get(key)
        if template is None:
            template = prepare(
                content, footer(account.brand, _PLACEHOLDER), placeholder=_PLACEHOLDER
            )
            if len(content) <= _TEMPLATE_MAX_BYTES:
                self._templates[key] = template
            while len(self._templates) > _TEMPLATES:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return template

    async def _applies(self, account: Account) -> bool:
        if account.stream == "marketing" or account.id in self._mandatory:
            return True
        if await self.store.has_flag(account.id, MANDATORY_FLAG):
            self._mandatory.add(account.id)  # the flag is never unset: ask the store once
            return True
        return False

    async def on_render(self, rendering: Rendering) -> Verdict:
        """Render the copy for its recipient with a token of their own."""
        account = rendering.account
        if rendering.kind != "message" or account is None or not await self._applies(account):
            return CONTINUE
        token = self.tokens.issue(account.id, rendering.recipient, campaign_tag(rendering.campaign))
        url = markers.unsubscribe_link(self.public_url, token)
        mailto = None
        if self.inbound:  # short and case-insensitive when the spooled recipient is known
            ident = rendering.recipient_id
            short = self.tokens.unsubscribe_address(ident) if ident else token
            mailto = markers.unsubscribe_mailto(short, self.inbound)
        template = self._template(rendering.message_id, account, rendering.content)
        result = fill(template, list_unsubscribe_headers(url, mailto), {_PLACEHOLDER: url})
        if result.footer_part is not None:
            log.info(
                "render_footer_part",
                message_id=rendering.message_id,
                recipient=rendering.recipient,
                reason=result.footer_part,
            )
        rendering.content = result.content
        footer: dict[str, object] = (
            {"footer": "in_parts", "parts": result.parts_changed}
            if result.footer_part is None
            else {"footer": "own_part", "why": result.footer_part}
        )
        rendering.notes["unsubscribe"] = {
            "token_id": token_id(token),
            "mailto": mailto is not None,
            **footer,
        }
        return CONTINUE
