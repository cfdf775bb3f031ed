"""Configuration: frozen, typed objects validated once, with errors that name their location.

`parse_config` validates the data of a configuration file (relay.configfile reads the file).
Relative paths are resolved against the folder the file is in, so the relay behaves the same
whatever its working directory.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from datetime import datetime  # noqa: TC003 - pydantic reads the annotation at run time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from relay.configaccounts import (
    Account,
    AccountIndex,
)
from relay.configdomains import DeliverabilityConfig, DnsConfig
from relay.configtypes import (
    ConfigPath,
    Domain,
    Duration,
    Hashes,
    Model,
    Size,
    is_loopback,
    resolve_path,
    split_host_port,
    web_url,
)
from relay.errors import ConfigError
from relay.policyfiles import policy_module
from relay.storage.url import parameter_problem

if TYPE_CHECKING:
    from collections.abc import Callable


class Listener(Model):
    """One SMTP listening socket."""

    address: str
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    auth: Literal["required", "optional"] = "required"
    allow_insecure_auth: bool = Field(
        default=False, description="allow AUTH without TLS; loopback listeners only"
    )
    trusted_account: str | None = Field(
        default=None,
        description="treat every client as this account without AUTH; loopback listeners only",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_host_port(value)
        return value

    @property
    def host(self) -> str:
        """The host part of `address`."""
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        """The port part of `address`."""
        return split_host_port(self.address)[1]

    @model_validator(mode="after")
    def _loopback_only(self) -> Listener:
        if self.allow_insecure_auth and not is_loopback(self.host):
            raise ValueError("allow_insecure_auth is only allowed on a loopback address")
        if self.trusted_account is not None and not is_loopback(self.host):
            raise ValueError("trusted_account is only allowed on a loopback address")
        return self


class TlsFiles(Model):
    """A certificate chain and its private key, both PEM."""

    certificate: ConfigPath
    private_key: ConfigPath


class SmtpConfig(Model):
    """The SMTP ingress."""

    listeners: Annotated[list[Listener], Field(min_length=1)]
    tls: TlsFiles | None = None
    max_message_size: Size = 25 * 1024 * 1024
    max_line_length: Annotated[int, Field(ge=998, le=1024 * 1024)] = Field(
        default=65536,
        description="longest line accepted in DATA, in octets without CRLF (RFC 5321 says 998;"
        " real mail is longer, and Postfix takes it); longer lines are re-encoded before relaying",
    )
    max_recipients: Annotated[int, Field(ge=100)] = 1000
    junk_command_limit: Annotated[int, Field(ge=1)] = Field(
        default=100,
        description="NOOP, RSET, VRFY and HELP allowed between two accepted messages (Postfix's"
        " smtpd_junk_command_limit); then 421 and the session is closed",
    )
    max_connections_per_ip: Annotated[int, Field(ge=1)] = 50
    auth_failure_limit: Annotated[int, Field(ge=1)] = 5
    auth_failure_window: Duration = 300.0
    timeout: Duration = 300.0
    reuse_port: bool = Field(
        default=False, description="let several relay processes share each listening port"
    )

    @model_validator(mode="after")
    def _tls_needed(self) -> SmtpConfig:
        if self.tls is None:
            for index, listener in enumerate(self.listeners):
                if listener.tls != "none":
                    raise ValueError(
                        f"listeners[{index}] uses tls {listener.tls!r} but smtp.tls is not set"
                    )
        return self


class UpstreamConfig(Model):
    """The MTA that receives every relayed message."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    tls: Literal["none", "opportunistic", "required"] = "opportunistic"
    verify_certificate: bool = True
    ca_file: ConfigPath | None = None
    username: str | None = None
    password: SecretStr | None = None
    connections: Annotated[int, Field(ge=1, le=256)] = 4
    timeout: Duration = 60.0

    @model_validator(mode="after")
    def _credentials(self) -> UpstreamConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class DeliveryConfig(Model):
    """Retries and expiry of spooled messages."""

    retry_schedule: Annotated[list[Duration], Field(min_length=1)] = Field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]
    )
    jitter: Annotated[float, Field(ge=0.0, le=0.5)] = 0.2
    max_age: Duration = 3 * 86400.0
    poll_interval: Annotated[Duration, Field(gt=0)] = 1.0
    lease: Annotated[Duration, Field(ge=1)] = Field(
        default=60.0,
        description="how long a claim lasts unless renewed; a dead node's work returns after it",
    )
    batch: Annotated[int, Field(ge=1, le=10_000)] = 100
    enabled: bool = Field(
        default=True,
        description="false: this process only accepts mail; others sharing its store deliver it",
    )


class InboundConfig(Model):
    """The relay's own mail domain (unsubscribe, complaint and bounce addresses)."""

    domain: Domain


class StorageConfig(Model):
    """Where state lives: `sqlite:///path` or `postgresql://...`."""

    url: str
    migrate: Literal["auto", "never"] = Field(
        "auto",
        description="auto: migrate the schema at start-up; never: refuse to start while"
        " migration steps are pending (run `optin-relay migrate` once for the fleet)",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("sqlite:///"):
            # sqlite:///relative/path (against the config file's folder), sqlite:////abs/path
            path = resolve_path(Path(value.removeprefix("sqlite:///")), info)
            return f"sqlite:///{path}"
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected sqlite:///PATH or postgresql://...")
        problem = parameter_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class WebConfig(Model):
    """The HTTP server (unsubscribe pages, forms, /metrics, /healthz)."""

    listen: str = "127.0.0.1:8025"
    public_url: str | None = None
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks of reverse proxies whose X-Forwarded-For is believed",
    )
    admin_token_hash: Hashes | None = Field(
        default=None,
        description="hash (`optin-relay hash-password`) of the bearer token for /admin/ endpoints;"
        " a list while rotating",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return web_url(value).rstrip("/")


class TokensConfig(Model):
    """HMAC keys for tokens: the first signs, all verify."""

    keys: Annotated[list[SecretStr], Field(min_length=1)]
    max_age: Annotated[Duration, Field(ge=30 * 86400)] = Field(
        default=365 * 86400.0, description="how long an unsubscribe link keeps working"
    )

    @field_validator("keys")
    @classmethod
    def _long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            if len(key.get_secret_value()) < 32:  # noqa: PLR2004
                raise ValueError("each token key needs at least 32 characters")
        return keys


class DkimKeyConfig(Model):
    """A DKIM private key and where its public half is published (SELECTOR._domainkey.DOMAIN)."""

    domain: Domain
    selector: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
        ),
    ]
    private_key: ConfigPath
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


class WebhooksConfig(Model):
    """How events are pushed to the accounts' webhooks."""

    allow_private: bool = Field(
        default=False,
        description="allow endpoints on loopback, private, link-local and metadata addresses"
        " (tests and private deployments only)",
    )
    timeout: Annotated[Duration, Field(gt=0, le=60)] = Field(
        default=10.0, description="a 2xx within this time counts as delivered"
    )
    retry_for: Annotated[Duration, Field(gt=0)] = Field(
        default=3 * 86400.0,
        description="how long a failing endpoint is retried before it is disabled",
    )
    poll_interval: Annotated[Duration, Field(gt=0)] = 1.0
    concurrency: Annotated[int, Field(ge=1, le=100)] = Field(
        default=8, description="endpoints served at once by one relay process"
    )
    lease: Annotated[Duration, Field(ge=1)] = Field(
        default=15.0,
        description="how long a relay holds an endpoint without news (renewed at each delivered"
        " event): a crashed relay's endpoints are taken over after this",
    )

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> WebhooksConfig:
        if self.lease <= self.timeout:
            msg = (
                f"lease ({self.lease:g}s) must be longer than timeout ({self.timeout:g}s): a"
                " request in flight would lose its endpoint to another relay"
            )
            raise ValueError(msg)
        return self


class EventsConfig(Model):
    """The events outbox (docs/events.md)."""

    retention: Annotated[Duration, Field(ge=86400)] = Field(
        default=30 * 86400.0,
        description="how long events are kept for the API and webhooks (at least a day)",
    )


BULK_CLAUSE = (
    "You will send mail only to people who asked for it, and never unsolicited bulk email:"
    " mail sent to more than a few people who did not give their permission."
)


class TermsConfig(Model):
    """The terms of use every account must accept (docs/enforcement.md)."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] = Field(
        description="where the terms are published (named in refusals and reminders)"
    )
    grace: Duration = Field(
        default=14 * 86400.0,
        description="after a version is published, mail of accounts that have not accepted it"
        " still flows this long (their contact is reminded)",
    )
    published: datetime | None = Field(
        default=None,
        description="when the version took effect (default: when a relay first saw it)",
    )
    bulk_clause: str = Field(
        default=BULK_CLAUSE, description="the clause on unsolicited bulk mail case notices quote"
    )


class JournalConfig(Model):
    """The journal of decisions behind `explain` and `policy replay` (docs/operations.md)."""

    enabled: bool = Field(
        default=True, description="journal every decision (off: explain shows only events)"
    )
    retention: Annotated[Duration, Field(ge=86400)] = Field(
        default=30 * 86400.0,
        description="how long journal entries are kept (at least a day); pruned hourly",
    )


class RateThreshold(Model):
    """A rate of events per delivered message over a trailing window, with its limits."""

    window: Annotated[Duration, Field(gt=0)] = 7 * 86400.0
    warn: Annotated[float, Field(gt=0, le=1)]
    suspend: Annotated[float, Field(gt=0, le=1)]
    min_volume: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="delivered messages in the window before the rate counts"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RateThreshold:
        if self.warn > self.suspend:
            raise ValueError("warn must not be above suspend")
        return self


# Fines by complaint type: phishing (fraud) and plain spam (abuse) are what the anti-spam
# policy exists to stop; mail carrying malware (virus) is usually a compromised sender rather
# than a spammer; "other" is a report that names no abuse.
DEFAULT_FINES = {"abuse": 100.0, "fraud": 100.0, "virus": 50.0, "other": 25.0}


class FeedbackConfig(Model):
    """Complaints, cases and bounces."""

    complaint_scope: Literal["account", "global"] = Field(
        default="account", description="what a complaint suppresses: the account's mail or all"
    )
    attribute_by_from_domain: bool = Field(
        default=False,
        description="attribute reports mailed to fbl@/abuse@ by the From domain when they carry"
        " none of the relay's markers (anyone can forge that; CLI and HTTP intake always may)",
    )
    notice_from: str | None = Field(
        default=None, description="From of case notices (default abuse@ the inbound domain)"
    )
    proof_deadline: Annotated[Duration, Field(gt=0)] = 7 * 86400.0
    fine: Annotated[float, Field(ge=0)] = Field(
        default=100.0, description="USD per upheld case of a complaint type `fines` does not name"
    )
    fines: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_FINES),
        description="USD per upheld case by complaint type (ARF Feedback-Type), each capped by"
        " max_fine",
    )
    max_fine: Annotated[float, Field(ge=0)] = 100.0
    after_suppression: Literal["terminate", "suspend"] = Field(
        default="terminate",
        description="a complaint from someone suppressed before the send",
    )
    upheld_cases: Annotated[int, Field(ge=1)] = Field(
        default=3, description="upheld cases within upheld_window that suspend the account"
    )
    upheld_window: Annotated[Duration, Field(gt=0)] = 30 * 86400.0
    complaint_rate: RateThreshold = RateThreshold(warn=0.001, suspend=0.003)
    bounce_rate: RateThreshold = RateThreshold(warn=0.05, suspend=0.10)
    sweep_interval: Annotated[Duration, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _fine_capped(self) -> FeedbackConfig:
        if self.fine > self.max_fine:
            raise ValueError(f"fine {self.fine} is above max_fine {self.max_fine}")
        return self


class SubscriptionsConfig(Model):
    """Hosted confirmed opt-in: pending lifetime, abuse limits, the confirmation sender."""

    pending_ttl: Annotated[Duration, Field(gt=0)] = Field(
        default=7 * 86400.0, description="a subscription not confirmed by then expires"
    )
    subscribe_per_ip: Annotated[int, Field(ge=1)] = Field(
        default=10, description="subscribe requests per client IP per hour (then 429)"
    )
    confirm_per_ip: Annotated[int, Field(ge=1)] = Field(
        default=30, description="confirmations per client IP per hour (then 429)"
    )
    subscribe_per_address: Annotated[int, Field(ge=1)] = Field(
        default=5, description="subscribe requests per address per hour (then silently dropped)"
    )
    emails_per_address: Annotated[int, Field(ge=1)] = Field(
        default=3, description="confirmation emails per address per day, over all accounts"
    )
    from_address: str | None = Field(
        default=None, description="sender of confirmation emails (default confirm@ relay domain)"
    )
    form_max_age: Annotated[Duration, Field(gt=0)] = Field(
        default=2 * 3600.0, description="how long a served form's CSRF token stays valid"
    )


class Config(Model):
    """The whole configuration file."""

    hostname: Domain
    smtp: SmtpConfig
    upstream: UpstreamConfig
    storage: StorageConfig
    delivery: DeliveryConfig = DeliveryConfig()
    inbound: InboundConfig | None = None
    web: WebConfig = WebConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    subscriptions: SubscriptionsConfig = SubscriptionsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    events: EventsConfig = EventsConfig()
    journal: JournalConfig = JournalConfig()
    terms: TermsConfig | None = None
    tokens: TokensConfig | None = None
    dns: DnsConfig = DnsConfig()
    deliverability: DeliverabilityConfig = DeliverabilityConfig()
    accounts: list[Account] = Field(default_factory=list)
    dkim: list[DkimKeyConfig] = Field(default_factory=list)
    policies: dict[str, Any] = Field(
        default_factory=dict, description="policy name -> its validated Settings, in file order"
    )
    abuse_contact: str | None = Field(
        default=None, description="named in refusals to suspended accounts (default abuse@HOSTNAME)"
    )
    policy_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        ids = Counter(account.id for account in self.accounts)
        usernames = Counter(account.username for account in self.accounts)
        for kind, counts in (("id", ids), ("username", usernames)):
            duplicates = sorted(value for value, n in counts.items() if n > 1)
            if duplicates:
                raise ValueError(f"accounts: duplicate {kind}: {', '.join(duplicates)}")
        if self.tokens is None:
            raise ValueError("tokens: required (unsubscribe links are signed with these keys)")
        if self.web.public_url is None:
            raise ValueError("web.public_url: required (the address of unsubscribe links)")
        for index, listener in enumerate(self.smtp.listeners):
            if listener.trusted_account is not None and listener.trusted_account not in ids:
                raise ValueError(
                    f"smtp.listeners[{index}].trusted_account: no account with id "
                    f"{listener.trusted_account!r}"
                )
        return self

    @property
    def relay_domain(self) -> str:
        """The relay's own mail domain: the inbound domain, else the hostname."""
        return self.inbound.domain if self.inbound is not None else self.hostname

    def account(self, account_id: str) -> Account | None:
        """Return the account with `account_id`, if configured."""
        return self._indexed().by_id.get(account_id)

    def account_by_username(self, username: str) -> Account | None:
        """Return the account whose SMTP username is `username`, if configured."""
        return self._indexed().by_username.get(username)

    def account_for_domain(self, domain: str) -> Account | None:
        """Return the first account (in file order) with `domain` among its From domains."""
        return self._indexed().by_domain.get(domain)

    @cached_property
    def account_index(self) -> AccountIndex:
        """The accounts' index, made at the first lookup."""
        return AccountIndex(self.accounts)

    def _indexed(self) -> AccountIndex:
        index = self.account_index
        if index.accounts is not self.accounts:  # a copy with other accounts: index them
            index = self.__dict__["account_index"] = AccountIndex(self.accounts)
        return index


def format_location(location: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as `accounts[1].from_domains`."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _problems(
    error: ValidationError,
    prefix: tuple[int | str, ...] = (),
    where: Callable[[tuple[int | str, ...]], str | None] | None = None,
) -> list[str]:
    problems = []
    for item in error.errors():
        loc = prefix + tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        place = where(loc) if where is not None else None
        problems.append(f"{place + ': ' if place else ''}{format_location(loc)}: {message}")
    return problems


def policy_settings_model(name: str) -> type[BaseModel]:
    """Return the `Settings` model of policy `name` (LookupError if there is no such policy)."""
    settings: type[BaseModel] = policy_module(name).Settings
    return settings


def parse_config(
    data: object,
    *,
    base_dir: Path | None = None,
    where: Callable[[tuple[int | str, ...]], str | None] | None = None,
) -> Config:
    """Validate already-parsed YAML data; raise ConfigError listing every problem.

    `where` names the file and line of a location, when the data came from files.
    """
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of configuration keys"])
    problems: list[str] = []
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems.extend(_problems(exc, where=where))
        config = None
    settings: dict[str, BaseModel] = {}
    raw_policies = data.get("policies") or {}
    if isinstance(raw_policies, dict):
        for name, section in raw_policies.items():
            try:
                model = policy_settings_model(str(name))
            except LookupError as exc:
                problems.append(f"policies.{name}: {exc}")
                continue
            try:
                settings[str(name)] = model.model_validate(section or {})
            except ValidationError as exc:
                problems.extend(_problems(exc, ("policies", str(name)), where))
    if problems or config is None:
        raise ConfigError(problems)
    # Each policy's section, validated by that policy's own Settings model, in file order.
    return config.model_copy(update={"policies": settings})
