"""Credentials: whose SMTP password or API key a secret is, verified once per configured hash.

Argon2 costs tens of milliseconds of CPU by design. A CRM that opens a new session for every
message would pay it at every AUTH, so a secret that verified is remembered: by whom it was
presented and an HMAC of it under a key made when the relay starts (never the secret itself),
together with the hashes it verified against. The entry holds only while the configuration
lists exactly those hashes, so removing or rotating a credential takes effect at the next
reload. A secret that fails is never remembered: every wrong guess costs a full verification,
as does an unknown username (no oracle by timing).
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING

from relay.metrics import CREDENTIAL_CHECKS
from relay.passwords import verify_password_async

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relay.config import Config
    from relay.configaccounts import Account

MAX_REMEMBERED = 10_000  # a bound on memory; when full, the whole set is forgotten


class Credentials:
    """Checks SMTP passwords and API keys against the configured hashes."""

    def __init__(self) -> None:
        """Remember nothing yet; the HMAC key lives as long as this process."""
        self._key = os.urandom(32)
        self._verified: dict[tuple[str, bytes], tuple[str, ...]] = {}

    async def authenticate(self, config: Config, username: str, password: str) -> Account | None:
        """The account whose SMTP credentials these are, else None."""
        account = config.account_by_username(username)
        hashes = account.password_hash if account else None
        ok = await self.verify(f"smtp:{username}", hashes, password)
        return account if ok else None

    async def api_key(self, account: Account, secret: str) -> bool:
        """Whether `secret` is one of the account's API keys."""
        return await self.verify(f"api:{account.id}", account.api_key_hash, secret)

    async def verify(self, who: str, hashes: str | Sequence[str] | None, secret: str) -> bool:
        """Whether `secret` matches one of `hashes`; remembered once it did."""
        current = (hashes,) if isinstance(hashes, str) else tuple(hashes or ())
        mark = (who, hmac.digest(self._key, secret.encode(), "sha256"))
        if current and self._verified.get(mark) == current:
            CREDENTIAL_CHECKS.labels("remembered").inc()
            return True
        if not await verify_password_async(hashes, secret):
            CREDENTIAL_CHECKS.labels("refused").inc()
            return False
        CREDENTIAL_CHECKS.labels("verified").inc()
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified[mark] = current
        return True
