"""A suspended or terminated account gets 550 5.7.1 at MAIL, with the abuse desk's address."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from relay.policy import CONTINUE, BasePolicy, PolicyServices, Reject, Verdict

if TYPE_CHECKING:
    from relay.policy import Transaction


class Settings(BaseModel):
    """`policies.account_state` (nothing to set: it cannot be turned off)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Policy(BasePolicy):
    """Refuses mail from accounts that are not active (a store failure defers: fail closed)."""

    name = "account_state"
    required = True
    before = ("*",)  # a suspended account hears so before anything else

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Read account states from the store."""
        del settings
        self.store = services.store
        config = services.config
        self.contact = config.abuse_contact or f"abuse@{config.hostname}"

    async def on_mail(self, tx: Transaction) -> Verdict:
        """550 5.7.1 unless the account is active."""
        state = await self.store.account_state(tx.account.id)
        if state is None or state.state == "active":
            return CONTINUE
        return Reject(
            f"Account {state.state}; contact {self.contact}", f"account_state.{state.state}"
        )
