"""Account standing: the one place that changes it (CLI, abuse policies) and logs the change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.logging import get_logger

if TYPE_CHECKING:
    from relay.storage.base import Store
    from relay.storage.records import AccountStateName

log = get_logger(__name__)


async def change_state(
    store: Store,
    account_id: str,
    state: AccountStateName,
    *,
    reason: str,
    actor: str,
    now: float,
) -> int:
    """Set the state, log the change and what it did to the account's spooled mail."""
    pending = await store.set_account_state(account_id, state, reason=reason, actor=actor, now=now)
    fields = {"account_id": account_id, "reason": reason, "actor": actor}
    if state == "suspended":
        log.warning("account_suspended", **fields)
        log.warning("account_mail_held", account_id=account_id, recipients=pending)
    elif state == "active":
        log.warning("account_reinstated", **fields)
        log.warning("account_mail_released", account_id=account_id, recipients=pending)
    else:
        log.warning("account_terminated", **fields)
        log.warning("account_mail_purged", account_id=account_id, recipients=pending)
    return pending
