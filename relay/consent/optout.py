"""The unsubscribe action: a valid token's recipient is suppressed for good (web and mailto).

Their opt-in records are marked withdrawn, with the time and the way, and kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from relay.logging import get_logger
from relay.storage.base import GLOBAL_SCOPE, Suppression
from relay.tokens import Claim, campaign_tag

if TYPE_CHECKING:
    from relay.config import Config
    from relay.storage.base import Store
    from relay.tokens import TokenCodec

log = get_logger(__name__)

Method = Literal["one_click", "page", "mailto"]


def unsubscribe_scope(config: Config, account_id: str) -> str:
    """What an unsubscribe suppresses: the account (default) or every account."""
    settings = config.policies.get("unsubscribe")
    scope = getattr(settings, "scope", "account")
    return GLOBAL_SCOPE if scope == "global" else account_id


async def unsubscribe(
    store: Store, config: Config, claim: Claim, *, method: Method, now: float
) -> bool:
    """Suppress the claim's recipient; idempotent. True if the address was not suppressed yet."""
    scope = unsubscribe_scope(config, claim.account_id)
    added = await store.suppress(
        Suppression(claim.recipient, scope, "unsubscribe", method, now), actor=method
    )
    # The opt-in records are kept, marked withdrawn (GDPR Art. 7(3)): when and how.
    await store.withdraw_consents(
        claim.recipient, None if scope == GLOBAL_SCOPE else claim.account_id, at=now, how=method
    )
    if added:
        await store.add_stats([(claim.account_id, "unsubscribe", now, 1)])
    log.info(
        "unsubscribed",
        account_id=claim.account_id,
        recipient=claim.recipient,
        scope=scope,
        method=method,
        campaign=claim.campaign,
        new=added,
    )
    return added


async def mailto_claim(store: Store, tokens: TokenCodec, token: str) -> Claim | None:
    """Whom an `unsub+TOKEN` mailto address unsubscribes, if the token is genuine.

    The short token names the spooled recipient. The long, self-contained one is what mail
    rendered by earlier versions carries; it keeps working for `tokens.max_age`.
    """
    recipient_id = tokens.verify_unsubscribe_address(token)
    if recipient_id is None:
        return tokens.verify(token)
    sent = await store.sent(recipient_id)
    if sent is None or sent.kind != "message" or sent.account_id is None:
        return None
    return Claim(sent.account_id, sent.recipient, campaign_tag(sent.campaign), sent.received_at)
