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
        self._accepted: set[tuple[str, str]] = set()  # acceptances are never withdrawn

    async def on_mail(self, tx: Transaction) -> Verdict:
        """The account's standing with the terms in force."""
        config = self.config.terms
        if config is None or (tx.account.id, config.version) in self._accepted:
            return CONTINUE
        now = self.clock.now()
        found = await terms.standing(self.store, config, tx.account.id, now)
        if found.standing == "accepted":
            self._accepted.add((tx.account.id, config.version))
            return CONTINUE
        await terms.remind(
            self.store, self.config, self.tokens, tx.account, now=now, until=found.grace_until
        )
        if found.standing == "grace":
            return CONTINUE
        return Reject(
            f"Account {tx.account.id} has not accepted the terms of use version"
            f" {config.version} ({config.url}); its contact has a link to accept them",
            "terms.not_accepted",
            facts={"version": config.version, "grace_until": found.grace_until},
        )
