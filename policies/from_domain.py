"""The envelope sender and every From address must be in the account's `from_domains`."""

from __future__ import annotations

from email.utils import getaddresses
from typing import TYPE_CHECKING

from relay.policy import CONTINUE, BasePolicy, PolicyServices, Reject, RuleSettings, Verdict

if TYPE_CHECKING:
    from relay.configaccounts import Account
    from relay.policy import Submission, Transaction


class Settings(RuleSettings):
    """`policies.from_domain`."""

    allow_subdomains: bool = False


def address_domain(address: str) -> str | None:
    """The lower-case ASCII domain of `address`, or None when it has none."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain:
        return None
    try:
        return domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


class Policy(BasePolicy):
    """Refuse mail whose sender domains the account does not own (550 5.7.1)."""

    name = "from_domain"
    required = True
    after = ("account_state",)

    def __init__(self, settings: Settings, services: PolicyServices) -> None:
        """Keep the settings; this policy needs no services."""
        del services
        self.settings = settings

    def owns(self, account: Account, domain: str | None) -> bool:
        """Say whether `account` may send from `domain`."""
        if domain is None:
            return False
        for owned in account.from_domains:
            if domain == owned or (self.settings.allow_subdomains and domain.endswith("." + owned)):
                return True
        return False

    async def on_mail(self, tx: Transaction) -> Verdict:
        """The envelope sender's domain must be the account's."""
        if not self.owns(tx.account, address_domain(tx.mail_from)):
            return Reject(
                f"Sender <{tx.mail_from}> is not in a domain this account may send from",
                "from_domain.envelope",
            )
        return CONTINUE

    async def on_data(self, tx: Transaction, submission: Submission) -> Verdict:
        """Exactly one From header, every address in it in one of the account's domains."""
        from_headers = submission.headers.get_all("From") or []
        if len(from_headers) != 1:
            return Reject(
                f"Message must have exactly one From header, it has {len(from_headers)}",
                "from_domain.header_count",
            )
        addresses = [addr for _, addr in getaddresses([str(from_headers[0])]) if addr]
        if not addresses:
            return Reject("From header has no address", "from_domain.header")
        for addr in addresses:
            if not self.owns(tx.account, address_domain(addr)):
                return Reject(
                    f"From address <{addr}> is not in a domain this account may send from",
                    "from_domain.header",
                )
        return CONTINUE
