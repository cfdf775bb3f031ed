"""One account's configuration (`accounts:`): who it is, its brand, lists, limits, webhooks.

`relay.config` holds the whole configuration and its loading; these are the models of one
account in it, and the index `Config` finds accounts through.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from relay.configtypes import Domain, Duration, Hashes, Model, web_url
from relay.storage.events import EVENT_TYPES


class Brand(Model):
    """What an account's recipients see: name, postal address, footer text, language, look."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    postal_address: str
    footer_text: str | None = None
    language: str = "en"
    logo_url: str | None = Field(default=None, description="https URL of the logo on pages")
    color: Annotated[str, Field(pattern=r"^#[0-9A-Fa-f]{3}([0-9A-Fa-f]{3})?$")] = Field(
        default="#1a56db", description="accent colour of pages and buttons (#rgb or #rrggbb)"
    )

    @field_validator("logo_url")
    @classmethod
    def _logo(cls, value: str | None) -> str | None:
        return None if value is None else web_url(value)


class MailingList(Model):
    """A list an account lets people subscribe to through the hosted confirmed opt-in form."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    consent_text: Annotated[str, Field(min_length=1)] = Field(
        description="what subscribers agree to, shown on the form and kept with each record"
    )
    consent_version: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="changes whenever consent_text changes; stored with each record"
    )


class Limits(Model):
    """An account's rate limits and abuse thresholds (the policy's numbers are the defaults)."""

    messages_per_hour: Annotated[int, Field(ge=1)] | None = None
    recipients_per_hour: Annotated[int, Field(ge=1)] | None = None
    recipients_per_message: Annotated[int, Field(ge=1)] | None = None
    per_domain_per_hour: Annotated[int, Field(ge=1)] | None = None
    suspicious_broadcast: Annotated[int, Field(ge=1)] = Field(
        default=10_000,
        description="recipients of one campaign within broadcast_window that halt it",
    )
    broadcast_window: Duration = 86400.0
    unsolicited_bulk: Annotated[int, Field(ge=1)] = Field(
        default=10, description="distinct recipients without opt-in within abuse_window tolerated"
    )
    suppression_violations: Annotated[int, Field(ge=1)] = Field(
        default=10, description="sends to suppressed addresses within abuse_window tolerated"
    )
    suppression_grace: Duration = Field(
        default=72 * 3600.0,
        description="a suppression younger than this is refused but not counted as a violation"
        " (the CRM has had the events to learn of it)",
    )
    abuse_window: Duration = 86400.0
    repeat_per_recipient: Annotated[int, Field(ge=1)] = Field(
        default=3,
        description="copies of one campaign one recipient may get within repeat_window; more"
        " are refused",
    )
    repeat_window: Annotated[Duration, Field(gt=0)] = 86400.0
    repeat_loop: Annotated[int, Field(ge=1)] = Field(
        default=100,
        description="distinct recipients refused for repeats within abuse_window that halt the"
        " account (a sender looping)",
    )


class Webhook(Model):
    """One endpoint of an account that receives its events (Standard Webhooks)."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s]*)?$", max_length=2000)]
    secret: Annotated[list[SecretStr], Field(min_length=1)] = Field(
        description="whsec_ + base64 of 24 to 64 random bytes; a list while rotating (each signs)"
    )
    events: list[str] = Field(
        default_factory=list, description="the event types it receives (empty: every type)"
    )

    @field_validator("secret", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("secret")
    @classmethod
    def _well_formed(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for secret in secrets:
            text = secret.get_secret_value()
            body = text.removeprefix("whsec_")
            try:
                raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
            except ValueError:
                raw = b""
            if not text.startswith("whsec_") or not 24 <= len(raw) <= 64:  # noqa: PLR2004
                raise ValueError("a webhook secret is whsec_ and the base64 of 24 to 64 bytes")
        return secrets

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type: {', '.join(unknown)} (see docs/events.md)")
        return events


class Account(Model):
    """A sender (a CRM's customer) that relays through optin-relay."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    username: Annotated[str, Field(min_length=1)]
    password_hash: Hashes = Field(description="SMTP AUTH password hash; a list while rotating")
    from_domains: Annotated[list[Domain], Field(min_length=1)]
    contact: str | None = None
    stream: Literal["marketing", "transactional"] = "marketing"
    brand: Brand = Field(description="name and postal address shown in every unsubscribe footer")
    limits: Limits = Limits()
    consent: Literal["off", "monitor", "enforce"] = Field(
        default="off", description="whether recipients need an opt-in record"
    )
    lists: list[MailingList] = Field(
        default_factory=list, description="lists with a hosted subscription form (/s/ID/LIST)"
    )
    api_key_hash: Hashes | None = Field(
        default=None,
        description="hash of the subscription API key's secret (hash-password);"
        " a list while rotating",
    )
    webhooks: list[Webhook] = Field(
        default_factory=list, description="endpoints that receive the account's events"
    )

    @field_validator("lists")
    @classmethod
    def _unique_lists(cls, lists: list[MailingList]) -> list[MailingList]:
        ids = [item.id for item in lists]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate list id: {', '.join(duplicates)}")
        return lists

    def mailing_list(self, list_id: str) -> MailingList | None:
        """The list with `list_id`, if the account has it."""
        return next((item for item in self.lists if item.id == list_id), None)


class AccountIndex:
    """The accounts by id, by SMTP username and by From domain (the first declaring it).

    Built once per list of accounts: a relay for thousands of accounts looks one up at every
    MAIL, AUTH and delivery, which a walk down the list made cost 0.85 ms at 10,000 accounts.
    """

    def __init__(self, accounts: list[Account]) -> None:
        """Index `accounts` (ids and usernames are unique: Config checks)."""
        self.accounts = accounts
        self.by_id = {account.id: account for account in accounts}
        self.by_username = {account.username: account for account in accounts}
        self.by_domain: dict[str, Account] = {}
        for account in accounts:
            for domain in account.from_domains:
                self.by_domain.setdefault(domain, account)
