"""Credentials: which configured account a username and password belong to (SMTP AUTH)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.passwords import verify_password_async

if TYPE_CHECKING:
    from relay.config import Account, Config


async def authenticate(config: Config, username: str, password: str) -> Account | None:
    """Return the account whose credentials these are, else None (same cost either way)."""
    account = next((a for a in config.accounts if a.username == username), None)
    ok = await verify_password_async(account.password_hash if account else None, password)
    return account if ok else None
