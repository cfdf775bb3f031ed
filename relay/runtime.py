"""What the running relay is configured with right now; replaced as a whole on reload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from relay.mail.signing import Signer, load_keys
from relay.policy import PolicyServices, build_pipeline
from relay.tlsutil import server_context
from relay.tokens import TokenCodec

if TYPE_CHECKING:
    import ssl

    from relay.clock import Clock
    from relay.config import Config
    from relay.policy import Pipeline
    from relay.storage.base import Store


class Context(Protocol):
    """What services outside the SMTP path need of the runtime: the config and the token keys.

    `Runtime` is one; the CLI makes a lighter one without loading TLS or DKIM files.
    """

    @property
    def config(self) -> Config:
        """The configuration in force."""
        ...

    @property
    def tokens(self) -> TokenCodec:
        """The token codec made from `tokens.keys`."""
        ...


@dataclass(frozen=True)
class Runtime:
    """The config in force, its policy pipeline and its TLS server context."""

    config: Config
    pipeline: Pipeline
    tls: ssl.SSLContext | None
    tokens: TokenCodec
    warnings: tuple[str, ...] = ()

    @classmethod
    def build(cls, config: Config, store: Store, clock: Clock) -> Runtime:
        """Load keys and TLS files, instantiate policies; raises on unusable files."""
        tokens = make_codec(config, clock)
        keys, warnings = load_keys(config.dkim)
        signer = Signer(keys)
        for n, account in enumerate(config.accounts):
            for domain in account.from_domains:
                if not signer.has_key(domain):
                    warnings.append(
                        f"accounts[{n}].from_domains: no DKIM key "
                        f"for {domain} (policies.dkim.missing_key decides)"
                    )
        pipeline = build_pipeline(PolicyServices(config, store, clock, tokens, signer))
        tls = None
        if config.smtp.tls is not None:
            tls = server_context(config.smtp.tls.certificate, config.smtp.tls.private_key)
        return cls(config, pipeline, tls, tokens, tuple(warnings))


def unsigned_own_mail(config: Config) -> list[str]:
    """The relay's own mail that no DKIM key would sign: the DKIM policy would hold it back.

    Case notices, confirmation emails and webhook notices are signed for their From domain
    like any mail; without a key for it they are deferred ("No DKIM key") and never arrive.
    (DSNs go out unsigned, as RFC 3464 reports may.)
    """
    dkim = config.policies.get("dkim")
    if getattr(dkim, "missing_key", "defer") == "relay_unsigned":
        return []
    signed = {key.domain for key in config.dkim}
    senders = []
    contacts = any(account.contact for account in config.accounts)
    if config.inbound is not None and contacts:
        senders.append(
            (
                "feedback.notice_from",
                "case notices",
                config.feedback.notice_from or f"abuse@{config.relay_domain}",
            )
        )
    if any(account.lists for account in config.accounts):
        senders.append(
            (
                "subscriptions.from_address",
                "confirmation emails",
                config.subscriptions.from_address or f"confirm@{config.relay_domain}",
            )
        )
    if contacts and any(account.webhooks for account in config.accounts):
        senders.append(("inbound.domain", "webhook notices", f"postmaster@{config.relay_domain}"))
    problems = []
    for key, what, sender in senders:
        domain = sender.rpartition("@")[2].lower()
        if domain not in signed:
            problems.append(
                f"{key}: {what} are sent from {sender}, but no dkim[] key has domain {domain}:"
                f' they would be deferred ("No DKIM key") and never arrive; add a key for'
                f" {domain} (optin-relay dkim keygen) or send them from a signed domain"
            )
    return problems


def make_codec(config: Config, clock: Clock) -> TokenCodec:
    """The token codec of `config` (its validation guarantees the keys are there)."""
    if config.tokens is None:
        raise ValueError("tokens: required")
    keys = [key.get_secret_value().encode() for key in config.tokens.keys]
    return TokenCodec(keys, clock, max_age=config.tokens.max_age)


class RuntimeRef:
    """A holder whose `current` is swapped in one assignment, so readers never see a mix."""

    def __init__(self, runtime: Runtime) -> None:
        """Start with `runtime`."""
        self.current = runtime

    def __call__(self) -> Runtime:
        """The runtime in force."""
        return self.current
