"""Terms of use: which version each account accepted, the grace for a new one, the reminder.

`terms: {version, url, grace}` in the configuration names the version in force. An account
that accepted it sends as usual. One that has not may still send for `terms.grace` (14 days)
after the version took effect (`terms.published`, else the first time a relay saw it); after
that its mail is refused at MAIL (policies/terms.py). Either way its contact is sent, once per
version, a reminder with a signed link (`/terms/ACCOUNT/TOKEN`) that accepts the terms through
the web, recording the time, the IP address and the user agent; an operator can record an
acceptance given otherwise (`optin-relay accounts accept-terms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.clock import to_datetime
from relay.logging import get_logger
from relay.mail.compose import relay_mail

if TYPE_CHECKING:
    from relay.config import Config, TermsConfig
    from relay.configaccounts import Account
    from relay.storage.base import Store
    from relay.storage.records import TermsAcceptance
    from relay.tokens import TokenCodec

log = get_logger(__name__)
Standing = Literal["accepted", "grace", "refused"]


@dataclass(frozen=True)
class TermsStanding:
    """Where an account stands with the terms in force."""

    standing: Standing
    version: str
    grace_until: float  # when mail without acceptance stops flowing


async def published_at(store: Store, terms: TermsConfig, now: float) -> float:
    """When the version in force took effect."""
    if terms.published is not None:
        return terms.published.timestamp()
    return await store.terms_published(terms.version, now=now)


async def standing(
    store: Store, terms: TermsConfig, account_id: str, now: float, *, published: float
) -> TermsStanding:
    """Whether the account accepted the terms in force, or is within their grace."""
    grace_until = published + terms.grace
    accepted = {a.version for a in await store.terms_accepted(account_id)}
    if terms.version in accepted:
        return TermsStanding("accepted", terms.version, grace_until)
    return TermsStanding("grace" if now < grace_until else "refused", terms.version, grace_until)


def link(config: Config, tokens: TokenCodec, account_id: str) -> str:
    """The signed link that accepts the terms in force for the account."""
    terms = config.terms
    assert terms is not None  # noqa: S101 - only called with terms configured
    token = tokens.terms_token(account_id, terms.version)
    return f"{config.web.public_url}/terms/{account_id}/{token}"


async def remind(
    store: Store, config: Config, tokens: TokenCodec, account: Account, *, now: float, until: float
) -> str | None:
    """Send the account's contact the reminder for the version in force, once; its queue id."""
    terms = config.terms
    if terms is None or not account.contact:
        return None
    if not await store.set_flag(
        account.id, f"terms_reminded:{terms.version}", reason="terms reminder", now=now
    ):
        return None  # reminded already (by this relay or another)
    when = to_datetime(until).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"The terms of use of {config.hostname} changed: version {terms.version} is in force"
        f" ({terms.url}).\n\n"
        f"Your account {account.id} has not accepted it yet. Mail from the account is accepted"
        f" until {when}; after that it is refused until the terms are accepted.\n\n"
        f"Read the terms at {terms.url}, then accept them here:\n\n"
        f"  {link(config, tokens, account.id)}\n\n"
        "In particular:\n\n"
        f"  {terms.bulk_clause}\n"
    )
    sender = config.feedback.notice_from or f"abuse@{config.relay_domain}"
    message = relay_mail(
        config,
        account_id=account.id,
        sender=(f"{config.hostname} abuse desk", sender),
        to=account.contact,
        subject=f"Terms of use {terms.version}: please accept them by {when}",
        text=text,
        now=now,
    )
    await store.spool(message)
    log.info(
        "terms_reminder_queued", account_id=account.id, version=terms.version, message_id=message.id
    )
    return message.id


def quote(config: Config, accepted: list[TermsAcceptance]) -> list[str]:
    """Lines for a case notice: the version the account accepted, and its clause on bulk mail."""
    terms = config.terms
    if terms is None:
        return []
    if not accepted:
        return [
            f"Your account has not accepted the terms of use ({terms.url}); they say:",
            "",
            f"  {terms.bulk_clause}",
        ]
    last = accepted[-1]
    day = to_datetime(last.accepted_at).strftime("%Y-%m-%d")
    return [
        (
            f"Your account accepted the terms of use version {last.version} on {day}"
            f" ({last.accepted_by}); they say:"
        ),
        "",
        f"  {terms.bulk_clause}",
    ]
