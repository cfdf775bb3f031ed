"""Every account must have accepted the terms of use in force (relay.accounts.terms).

With `terms` configured, MAIL from an account that has not accepted `terms.version` is refused
with 550 5.7.1 naming `terms.url`, once `terms.grace` (14 days) after the version took effect
has passed; within it the mail flows. Either way the account's contact is reminded once per
version, with a link that accepts the terms. Without `terms` in the configuration the policy
checks nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.accounts import terms
from relay.policy import CONTINUE, BasePolicy, PolicyServices, Reject, RuleSettings, Verdict

if TYPE_CHECKING:
    from relay.policy import Transaction


class Settings(RuleSettings):
    """`policies.terms` (the terms themselves are the top-level `terms` section)."""


class Policy(BasePolicy):
    """Refuses MAIL from accounts without the terms in force, after their grace."""

    name = "terms"
    required = True
    after = ("account_state",)  # a suspended account is refused as such
    before = ("from_domain",)  # whether the account may send at all comes first

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Read acceptances from the store; remind with the runtime's token keys."""
        del settings
        self.config = services.config
        self.store = services.store
        self.clock = services.clock
        self.tokens = services.tokens
        # What never changes once known: acceptances, reminders sent, publication times.
        self._accepted: set[tuple[str, str]] = set()
        self._reminded: set[tuple[str, str]] = set()
        self._published: dict[str, float] = {}

    async def on_mail(self, tx: Transaction) -> Verdict:
        """The account's standing with the terms in force."""
        config = self.config.terms
        if config is None or (tx.account.id, config.version) in self._accepted:
            return CONTINUE
        now = self.clock.now()
        key = (tx.account.id, config.version)
        if config.version not in self._published:
            self._published[config.version] = await terms.published_at(self.store, config, now)
        published = self._published[config.version]
        found = await terms.standing(self.store, config, tx.account.id, now, published=published)
        if found.standing == "accepted":
            self._accepted.add(key)
            return CONTINUE
        if key not in self._reminded:
            await terms.remind(
                self.store, self.config, self.tokens, tx.account, now=now, until=found.grace_until
            )
            self._reminded.add(key)
        if found.standing == "grace":
            return CONTINUE
        return Reject(
            f"Account {tx.account.id} has not accepted the terms of use version"
            f" {config.version} ({config.url}); its contact has a link to accept them",
            "terms.not_accepted",
            facts={"version": config.version, "grace_until": found.grace_until},
        )
