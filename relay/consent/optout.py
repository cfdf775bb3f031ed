"""The opt-out action: an address is suppressed for good, its opt-in withdrawn, the fact counted.

One action for every way out: an unsubscribe (one-click, page, mailto, a feedback loop's
opt-out), a complaint and a hard bounce. The opt-in records are kept, marked withdrawn with the
time and the way (GDPR Art. 7(3)); a hard bounce withdraws nothing (the person did not ask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.logging import get_logger
from relay.storage.records import GLOBAL_SCOPE, Suppression
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


@dataclass(frozen=True)
class OptOut:
    """One address leaving: who, whose mail, how far, and what is recorded of it."""

    recipient: str
    account_id: str | None  # whose mail it was (None: mail of the relay's own)
    scope: str  # the suppression's scope: an account id or GLOBAL_SCOPE
    reason: str  # unsubscribe | complaint | bounce
    source: str  # where it came from, as the suppression records it
    actor: str  # who made the change, for the audit trail
    withdraw: str | None  # how the opt-in records are marked withdrawn (None: kept standing)
    stat: str | None  # the account statistic counted (None: not counted)
    count_repeats: bool = False  # count even when the address was suppressed already
    case_id: str | None = None  # the complaint's case, named in the events


async def opt_out(store: Store, out: OptOut, *, now: float) -> bool:
    """Suppress, withdraw and count; idempotent. True if the address was not suppressed yet."""
    added = await store.suppress(
        Suppression(out.recipient, out.scope, out.reason, out.source, now),
        actor=out.actor,
        account_id=out.account_id,
        details={"case_id": out.case_id} if out.case_id else None,
    )
    if out.withdraw is not None:
        account = None if out.scope == GLOBAL_SCOPE else out.account_id
        await store.withdraw_consents(out.recipient, account, at=now, how=out.withdraw)
    if out.stat is not None and out.account_id is not None and (added or out.count_repeats):
        await store.add_stats([(out.account_id, out.stat, now, 1)])
    return added


async def unsubscribe(
    store: Store, config: Config, claim: Claim, *, method: Method, now: float
) -> bool:
    """Suppress the claim's recipient; idempotent. True if the address was not suppressed yet."""
    scope = unsubscribe_scope(config, claim.account_id)
    out = OptOut(
        claim.recipient,
        claim.account_id,
        scope,
        "unsubscribe",
        method,
        method,
        method,
        "unsubscribe",
    )
    added = await opt_out(store, out, now=now)
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
