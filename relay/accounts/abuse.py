"""Halting an account for abuse: suspension with the rule and its numbers on the record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.accounts.standing import change_state
from relay.logging import get_logger

if TYPE_CHECKING:
    from relay.storage.base import Store

log = get_logger(__name__)


async def halt(
    store: Store, account_id: str, rule: str, *, count: float, threshold: float, now: float
) -> None:
    """Suspend the account (its queued mail is held): `rule` counted `count` > `threshold`."""
    state = await store.account_state(account_id)
    if state is not None and state.state != "active":
        return
    log.warning(
        "account_halted", account_id=account_id, rule=rule, count=count, threshold=threshold
    )
    await change_state(
        store,
        account_id,
        "suspended",
        reason=f"{rule}: {count} > {threshold}",
        actor=f"policy:{rule}",
        now=now,
    )
