"""Each account against the mailbox providers' bulk-sender rules, with the figure behind each.

The rules Gmail and Yahoo set for bulk senders in 2024 (Outlook.com in 2025; the sources are in
docs/deliverability.md), as the relay can tell them for an account:

- `authentication`: SPF and DKIM pass and DMARC is published and aligned, for every From
  domain (what `domains check` last settled, relay.domains);
- `one_click_unsubscribe`: RFC 8058 one-click unsubscribe on every broadcast (the relay adds
  the headers and the link to every copy itself: the unsubscribe policy, always on);
- `unsubscribe_honoured`: within 2 days (the relay suppresses at the request, at once);
- `complaint_rate`: spam complaints below 0.1 %, never at 0.3 % (the account's complaints per
  delivered message over the last 7 days, and each UTC day of the last 30 with at least
  `feedback.complaint_rate.min_volume` deliveries);
- `tls_to_upstream`: TLS on the connection that carries the mail on (`upstream.tls`).

Each rule is `ok`, `warning` (the 0.1 % line passed), `failing`, or `unknown` (nothing proven
yet: a domain never checked, or no mail delivered to rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay.config import Config
    from relay.configaccounts import Account
    from relay.storage.base import Store
    from relay.storage.domainchecks import DomainCheck

DAY = 86400.0
COMPLAINT_TARGET = 0.001  # Gmail: "below 0.10%"
COMPLAINT_NEVER = 0.003  # Gmail: "avoid ever reaching a spam rate of 0.30% or higher"
RuleState = Literal["ok", "warning", "failing", "unknown"]


@dataclass(frozen=True)
class Rule:
    """One bulk-sender rule: its state and the figure it rests on."""

    name: str
    state: RuleState
    figure: str


@dataclass(frozen=True)
class Readiness:
    """An account's standing against every rule, and its domains as last checked."""

    account_id: str
    rules: list[Rule]
    domains: list[DomainCheck]

    @property
    def ready(self) -> bool:
        """Whether every rule is ok."""
        return all(rule.state == "ok" for rule in self.rules)


def _authentication(account: Account, checks: dict[str, DomainCheck]) -> Rule:
    settled = {
        domain: checks[domain].settled if domain in checks else "pending"
        for domain in account.from_domains
    }
    figure = ", ".join(f"{domain} {status}" for domain, status in settled.items()) or "no domains"
    if any(status == "failing" for status in settled.values()):
        return Rule("authentication", "failing", figure)
    if settled and all(status == "verified" for status in settled.values()):
        return Rule("authentication", "ok", figure)
    return Rule("authentication", "unknown", figure + " (run `optin-relay domains check`)")


def _percent(rate: float) -> str:
    return f"{100 * rate:.3f} %".replace(".000 %", " %")


def _complaints(days: dict[float, dict[str, int]], now: float, min_volume: int) -> Rule:
    week = [totals for day, totals in days.items() if day >= now - 7 * DAY]
    complaints = sum(t.get("complaint", 0) for t in week)
    delivered = sum(t.get("delivered", 0) for t in week)
    # A day counts from `feedback.complaint_rate.min_volume` deliveries on (one complaint of
    # ten messages is no rate); the week's rate counts whatever its volume.
    daily = [
        (t.get("complaint", 0) / t["delivered"], day)
        for day, t in days.items()
        if t.get("delivered", 0) >= min_volume
    ]
    worst = max(daily, default=(0.0, 0.0))
    if not delivered and not daily:
        return Rule("complaint_rate", "unknown", "nothing delivered in the last 30 days")
    rate = complaints / delivered if delivered else 0.0
    figure = (
        f"{_percent(rate)} over 7 days ({complaints} of {delivered});"
        f" highest day in 30: {_percent(worst[0])}"
    )
    if worst[0] >= COMPLAINT_NEVER:
        return Rule("complaint_rate", "failing", figure)
    if rate >= COMPLAINT_TARGET:
        return Rule("complaint_rate", "warning", figure)
    return Rule("complaint_rate", "ok", figure)


async def readiness(config: Config, store: Store, account: Account, *, now: float) -> Readiness:
    """The account against every rule."""
    return (await readiness_of(config, store, [account], now=now))[0]


async def readiness_of(
    config: Config, store: Store, accounts: Sequence[Account], *, now: float
) -> list[Readiness]:
    """Several accounts against every rule, from two queries whatever their number."""
    one = accounts[0].id if len(accounts) == 1 else None
    checks: dict[str, dict[str, DomainCheck]] = {}
    for check in await store.domain_checks(one):
        checks.setdefault(check.account_id, {})[check.domain] = check
    days = await store.stats_by_day(since=now - 30 * DAY, account_id=one)
    return [
        _rules(config, account, checks.get(account.id, {}), days.get(account.id, {}), now)
        for account in accounts
    ]


def _rules(
    config: Config,
    account: Account,
    checks: dict[str, DomainCheck],
    days: dict[float, dict[str, int]],
    now: float,
) -> Readiness:
    one_click = (
        "List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) and a visible link on every copy"
        if account.stream == "marketing"
        else "on every broadcast past policies.unsubscribe.mandatory_after recipients"
        " (a transactional stream)"
    )
    tls = config.upstream.tls
    rules = [
        _authentication(account, checks),
        Rule("one_click_unsubscribe", "ok", one_click),
        Rule("unsubscribe_honoured", "ok", "at once: an unsubscribe suppresses the address"),
        _complaints(days, now, config.feedback.complaint_rate.min_volume),
        Rule(
            "tls_to_upstream",
            "ok" if tls == "required" else "warning" if tls == "opportunistic" else "failing",
            f"upstream.tls: {tls}",
        ),
    ]
    return Readiness(account.id, rules, [checks[d] for d in account.from_domains if d in checks])
