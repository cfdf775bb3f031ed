"""Confirmed (double) opt-in: the one place that starts and confirms subscriptions.

`subscribe` records a pending subscription and mails a confirmation link through the relay
itself; `confirm` turns it into an opt-in record (method `confirmed`, both steps' times, IPs and
user agents, the consent text and its version, the form URL). The caller always gets the same
answer for a well-formed request, whether the address is new, pending, confirmed or suppressed:
nothing tells an outsider whether an address is known. Limits per client IP, per address and
on confirmation emails per address per day keep the form from being used to mail-bomb anyone.
An address suppressed by an unsubscribe can come back through this flow (the confirmation lifts
that account's suppression, audited); complaint and bounce suppressions are never lifted here.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from relay.logging import get_logger
from relay.mail.branding import confirmation_email
from relay.mail.compose import relay_mail
from relay.metrics import SUBSCRIPTIONS
from relay.storage.records import Confirmation, Consent, NewMessage, Subscription, normalize_address

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.config import Config
    from relay.configaccounts import Account, MailingList
    from relay.runtime import Context
    from relay.storage.base import Store

log = get_logger(__name__)
HOUR = 3600.0
DAY = 86400.0
MAX_ADDRESS = 254
MAX_FIELD = 1000  # user agents and URLs are kept, but not without bound
_ADDRESS = re.compile(
    r"^[^@\s<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$"
)
Answer = Literal["accepted", "invalid_address", "rate_limited"]
ConfirmResult = Literal["confirmed", "already_confirmed", "invalid", "rate_limited"]


@dataclass(frozen=True)
class Requester:
    """Who asks: the client's IP and user agent, and the form they used."""

    ip: str | None
    user_agent: str | None
    form_url: str


def valid_address(address: str) -> bool:
    """A plausible mailbox (syntax only; the confirmation proves the rest)."""
    return len(address) <= MAX_ADDRESS and _ADDRESS.match(address) is not None


def token_hash(token: str) -> str:
    """What the store keeps of a confirmation token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:MAX_FIELD]


class Subscriptions:
    """Starts and confirms subscriptions against the store, mailing through the spool."""

    def __init__(
        self,
        store: Store,
        runtime: Callable[[], Context],
        clock: Clock,
        on_spooled: Callable[[], None] = lambda: None,
    ) -> None:
        """Act on `store` with the current config; `on_spooled` wakes delivery."""
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.on_spooled = on_spooled

    async def closed(self, account_id: str) -> bool:
        """Whether the account is terminated: its forms and API take no subscriptions."""
        state = await self.store.account_state(account_id)
        return state is not None and state.state == "terminated"

    async def _allowed(self, kind: str, key: str, limit: int, window: float) -> bool:
        """Count one event for `key` against `limit` per `window`, shared by every process."""
        allowed, _ = await self.store.window_take(
            "*", f"{kind}:{key}", key, now=self.clock.now(), window=window, limit=limit
        )
        return allowed

    async def subscribe(
        self,
        account: Account,
        mailing_list: MailingList,
        address: str,
        requester: Requester,
        *,
        limit_ip: bool = True,
    ) -> Answer:
        """Start the confirmed opt-in for `address`; the answer never says if it is known."""
        config = self.runtime().config
        limits = config.subscriptions
        address = normalize_address(address)
        if not valid_address(address):
            return "invalid_address"
        if limit_ip and not await self._allowed(
            "subscribe_ip", requester.ip or "-", limits.subscribe_per_ip, HOUR
        ):
            log.info("subscription_rate_limited", client_ip=requester.ip, step="subscribe")
            SUBSCRIPTIONS.labels("subscribe", "rate_limited").inc()
            return "rate_limited"
        fields = {"account_id": account.id, "list_id": mailing_list.id, "recipient": address}
        reason = await self._why_not(account, mailing_list, address)
        if reason is None and not await self._allowed(
            "subscribe_address", address, limits.subscribe_per_address, HOUR
        ):
            reason = "address_rate"
        if reason is None and not await self._allowed(
            "confirmation_mail", address, limits.emails_per_address, DAY
        ):
            reason = "email_cap"
        if reason is not None:
            log.info("subscription_dropped", reason=reason, client_ip=requester.ip, **fields)
            SUBSCRIPTIONS.labels("subscribe", "dropped").inc()
            return "accepted"
        token = secrets.token_urlsafe(32)
        now = self.clock.now()
        item = Subscription(
            token_hash=token_hash(token),
            account_id=account.id,
            list_id=mailing_list.id,
            address=address,
            status="pending",
            created_at=now,
            expires_at=now + limits.pending_ttl,
            ip=requester.ip,
            user_agent=_clip(requester.user_agent),
            form_url=_clip(requester.form_url) or "",
            consent_text_version=mailing_list.consent_version,
            consent_text=mailing_list.consent_text,
        )
        await self.store.add_subscription(item)
        message = self._confirmation(config, account, mailing_list, address, token, now=now)
        await self.store.spool(message)
        self.on_spooled()
        log.info("subscription_requested", client_ip=requester.ip, message_id=message.id, **fields)
        SUBSCRIPTIONS.labels("subscribe", "requested").inc()
        return "accepted"

    async def _why_not(
        self, account: Account, mailing_list: MailingList, address: str
    ) -> str | None:
        """Why no confirmation email goes out for `address`, if there is a reason."""
        suppressed = await self.store.suppressed(address, account.id)
        if suppressed is not None and suppressed.reason != "unsubscribe":
            return f"suppressed_{suppressed.reason}"  # complaints and bounces stay suppressed
        for record in await self.store.consents(account_id=account.id, address=address):
            if (
                record.list_id == mailing_list.id
                and record.method == "confirmed"
                and record.withdrawn_at is None
                and (suppressed is None or suppressed.created_at < (record.confirmed_at or 0))
            ):
                return "already_confirmed"
        return None

    def _confirmation(
        self,
        config: Config,
        account: Account,
        mailing_list: MailingList,
        address: str,
        token: str,
        *,
        now: float,
    ) -> NewMessage:
        """The branded confirmation email, spooled as the relay's own mail (signed for it)."""
        sender = config.subscriptions.from_address or f"confirm@{config.relay_domain}"
        link = f"{config.web.public_url}/c/{token}"
        subject, text, html = confirmation_email(account.brand, mailing_list.name, link)
        return relay_mail(
            config,
            account_id=account.id,
            sender=(account.brand.name, sender),
            to=address,
            subject=subject,
            text=text,
            html=html,
            now=now,
        )

    async def pending(self, token: str) -> Subscription | None:
        """The subscription a confirmation link names, if it can still be confirmed or was."""
        item = await self.store.subscription(token_hash(token))
        if item is None:
            return None
        if item.status == "pending" and item.expires_at <= self.clock.now():
            return None
        return item

    async def confirm(
        self, token: str, *, ip: str | None, user_agent: str | None
    ) -> tuple[ConfirmResult, Subscription | None]:
        """Confirm the subscription `token` names: the opt-in record is written now."""
        result, item = await self._confirm(token, ip=ip, user_agent=user_agent)
        SUBSCRIPTIONS.labels("confirm", result).inc()
        return result, item

    async def _confirm(
        self, token: str, *, ip: str | None, user_agent: str | None
    ) -> tuple[ConfirmResult, Subscription | None]:
        limits = self.runtime().config.subscriptions
        if not await self._allowed("confirm_ip", ip or "-", limits.confirm_per_ip, HOUR):
            log.info("subscription_rate_limited", client_ip=ip, step="confirm")
            return "rate_limited", None
        item = await self.pending(token)
        if item is None:
            return "invalid", None
        if item.status == "confirmed":
            return "already_confirmed", item
        now = self.clock.now()
        evidence = {
            "consent_text": item.consent_text,
            "form_url": item.form_url,
            "subscribe": {"at": item.created_at, "ip": item.ip, "user_agent": item.user_agent},
            "confirm": {"at": now, "ip": ip, "user_agent": _clip(user_agent)},
        }
        record = Consent(
            account_id=item.account_id,
            address=item.address,
            list_id=item.list_id,
            method="confirmed",
            subscribed_at=item.created_at,
            confirmed_at=now,
            source=f"form:{item.form_url}",
            ip=item.ip,
            user_agent=item.user_agent,
            consent_text_version=item.consent_text_version,
            evidence=json.dumps(evidence, sort_keys=True),
        )
        confirmation = Confirmation(now, ip, _clip(user_agent), record, "form:confirm")
        confirmed = await self.store.confirm_subscription(item.token_hash, confirmation)
        if confirmed is None:
            return "invalid", None  # expired or confirmed meanwhile
        log.info(
            "subscription_confirmed",
            account_id=item.account_id,
            list_id=item.list_id,
            recipient=item.address,
            client_ip=ip,
        )
        return "confirmed", confirmed
