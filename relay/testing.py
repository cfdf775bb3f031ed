"""Helpers for testing a policy without a server: a configuration, transactions, and a store.

A policy's unit tests build it as the pipeline would, with a real store held in memory (SQLite
in a scratch folder on a memory file system where the machine has one), and call its stages
directly; each test takes milliseconds. End-to-end tests still go through the real SMTP server.

    async with PolicyHarness.open("role_address", {"local_parts": ["info"]}) as harness:
        tx = harness.transaction()
        verdict = await harness.policy.on_rcpt(tx, "info@example.net")

See docs/policies.md for a worked example.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.clock import ManualClock
from relay.config import parse_config
from relay.mail.campaign import campaign_key, parse
from relay.policy import PolicyServices, Rendering, Submission, Transaction
from relay.policyfiles import policy_module
from relay.runtime import make_codec
from relay.storage import scratch_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from relay.config import Config
    from relay.configaccounts import Account
    from relay.policy import BasePolicy
    from relay.storage.base import Store

# An Argon2id hash of "policy-testing": configurations need one, and hashing costs ~0.1 s.
PASSWORD_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$0FdSBVqkwirHYJUFBxIFUA"
    "$h9tM9VVNzTWZ6mCLBoIEfwgvQ8YHKQIMig1iree2Swk"
)
TOKEN_KEY = "relay-testing-token-key-0123456789abcdef"


def account_data(account_id: str = "acme", **fields: Any) -> dict[str, Any]:  # noqa: ANN401
    """One account as YAML would give it; `fields` override or add keys."""
    data: dict[str, Any] = {
        "id": account_id,
        "username": f"{account_id}-crm",
        "password_hash": PASSWORD_HASH,
        "from_domains": [f"{account_id}.example"],
        "contact": f"abuse-desk@{account_id}.example",
        "brand": {"name": f"{account_id.title()} News", "postal_address": "1 Main St, Springfield"},
    }
    data.update(fields)
    return data


def make_config(
    *,
    policies: dict[str, Any] | None = None,
    accounts: list[dict[str, Any]] | None = None,
    **sections: Any,  # noqa: ANN401
) -> Config:
    """A valid configuration with one marketing account (`acme`), validated like a file."""
    return parse_config(config_dict(policies=policies, accounts=accounts, **sections))


def config_dict(
    *,
    policies: dict[str, Any] | None = None,
    accounts: list[dict[str, Any]] | None = None,
    **sections: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """What `make_config` validates, as a YAML file would give it."""
    data: dict[str, Any] = {
        "hostname": "relay.test.example",
        "smtp": {"listeners": [{"address": "127.0.0.1:0", "tls": "none", "auth": "optional"}]},
        "upstream": {"host": "127.0.0.1", "port": 25, "tls": "none"},
        "storage": {"url": "sqlite:///unused.db"},
        "web": {"listen": "127.0.0.1:0", "public_url": "https://relay.test.example"},
        "inbound": {"domain": "relay.test.example"},
        "tokens": {"keys": [TOKEN_KEY]},
        "accounts": accounts or [account_data()],
        "policies": policies or {},
    }
    data.update(sections)
    return data


def submission(content: bytes) -> Submission:
    """The data stage's view of `content`, parsed as the ingress parses it."""
    headers = parse(content)
    return Submission(content, headers, campaign_key(headers))


@dataclass
class PolicyHarness:
    """One policy built as the pipeline builds it, with its config, store and clock."""

    policy: BasePolicy
    config: Config
    store: Store
    clock: ManualClock
    services: PolicyServices

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        settings: dict[str, Any] | None = None,
        *,
        config: Config | None = None,
    ) -> AsyncIterator[PolicyHarness]:
        """Build policy `name` with `settings` (its config section) over a memory store."""
        config = config or make_config(policies={name: settings or {}})
        clock = ManualClock()
        tokens = make_codec(config, clock)
        module = policy_module(name)
        async with scratch_store() as store:
            services = PolicyServices(config, store, clock, tokens)
            section = config.policies.get(name) or module.Settings()
            yield cls(module.Policy(section, services), config, store, clock, services)

    def account(self, account_id: str | None = None) -> Account:
        """A configured account (the first one by default)."""
        if account_id is None:
            return self.config.accounts[0]
        found = self.config.account(account_id)
        if found is None:
            raise LookupError(f"no account {account_id!r} in the harness's config")
        return found

    def transaction(
        self,
        mail_from: str | None = None,
        *,
        account: str | None = None,
        recipients: list[str] | None = None,
        message_id: str = "MTESTING0000000000001",
        client_ip: str = "127.0.0.1",
    ) -> Transaction:
        """A transaction after MAIL FROM (and the RCPTs in `recipients`, already accepted)."""
        owner = self.account(account)
        sender = mail_from or f"news@{owner.from_domains[0]}"
        return Transaction(message_id, owner, sender, client_ip, list(recipients or []))

    def rendering(
        self, content: bytes, recipient: str, *, account: str | None = None, recipient_id: int = 1
    ) -> Rendering:
        """One recipient's copy at the render stage."""
        owner = self.account(account)
        return Rendering(
            message_id="MTESTING0000000000001",
            account=owner,
            mail_from=f"news@{owner.from_domains[0]}",
            recipient=recipient,
            content=content,
            original=content,
            recipient_id=recipient_id,
        )
