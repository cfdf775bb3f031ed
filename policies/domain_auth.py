"""Mail only from sending domains DNS has proven: 550 5.7.26 at MAIL from one that failed.

What was proven is what `optin-relay domains check` and the relays' own rechecks keep in the
store (relay.domains); this policy reads it, every relay at most DOMAINS_FRESH seconds late, so
a domain whose records appear flows once it is rechecked, with no reload. A domain that failed
its last conclusive check is refused, naming what is missing; one never checked yet, or whose
DNS did not answer since, is not refused by the DNS alone (`domain_unproven` is logged).

The default mode is `monitor`: turning the rule on shows what it would refuse (logged as
`policy_would_refuse`, counted, journaled) before it refuses anything; `mode: enforce` then
refuses. 5.7.26 is the code Gmail gives unauthenticated mail (RFC 7372's "multiple
authentication checks failed").
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from policies.from_domain import address_domain
from relay.logging import get_logger
from relay.policy import CONTINUE, BasePolicy, PolicyServices, Reject, RuleSettings, Verdict

if TYPE_CHECKING:
    from relay.policy import Transaction
    from relay.storage.domainchecks import DomainCheck, Requirement

log = get_logger(__name__)

DOMAINS_FRESH = 5.0  # seconds a relay may answer from what it last read of the checks


class Settings(RuleSettings):
    """`policies.domain_auth`."""

    mode: Literal["enforce", "monitor"] = Field(
        default="monitor",
        description="monitor (default): refusals are logged, counted and journaled, not done",
    )


def _record(requirement: Requirement) -> str:
    """The requirement and, when it names one, the DNS record to publish."""
    publish = requirement.publish or ""
    if " IN " not in publish:
        return requirement.name
    name, _, rest = publish.partition(" IN ")
    return f"{requirement.name} ({name.rstrip('.')} {rest.split()[0]})"


class Policy(BasePolicy):
    """Refuse MAIL from a domain whose last conclusive check failed (550 5.7.26)."""

    name = "domain_auth"
    after = ("from_domain",)  # the domain is one of the account's own

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Read the checks from the store, by the services' clock."""
        del settings
        self.store = services.store
        self.clock = services.clock
        self._checks: dict[tuple[str, str], DomainCheck] = {}
        self._read_at = float("-inf")
        self._reading = asyncio.Lock()  # sessions that find the checks stale share one read
        self._told: set[tuple[str, str, str]] = set()  # unproven domains logged, once each

    async def _check(self, account_id: str, domain: str) -> DomainCheck | None:
        if self.clock.now() - self._read_at >= DOMAINS_FRESH:
            async with self._reading:
                now = self.clock.now()
                if now - self._read_at >= DOMAINS_FRESH:  # nobody read them while it waited
                    checks = await self.store.domain_checks()
                    self._checks = {(c.account_id, c.domain): c for c in checks}
                    self._read_at = now
        return self._checks.get((account_id, domain))

    async def on_mail(self, tx: Transaction) -> Verdict:
        """The envelope sender's domain must not have failed its last conclusive check."""
        domain = address_domain(tx.mail_from)
        if domain is None:
            return CONTINUE
        check = await self._check(tx.account.id, domain)
        if check is None or check.settled != "failing":
            status = check.status if check else "pending"
            if status != "verified" and (tx.account.id, domain, status) not in self._told:
                self._told.add((tx.account.id, domain, status))
                log.info("domain_unproven", account_id=tx.account.id, domain=domain, status=status)
            return CONTINUE
        wrong = [r for r in check.requirements if r.state in ("missing", "failing")]
        shown = "; ".join(_record(r) for r in wrong) or "its last conclusive check failed"
        return Reject(
            f"{domain} is not authenticated: {shown}. Publish what `optin-relay domains check`"
            " shows for it",
            "domain_auth.unverified",
            code=550,
            status="5.7.26",
            facts={"domain": domain, "missing": [r.name for r in wrong]},
        )
