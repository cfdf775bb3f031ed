"""`optin-relay webhooks status | test ACCOUNT | enable ACCOUNT URL`: the accounts' endpoints.

`status` lists every configured endpoint with where it is in its account's events, how many it
got, and whether it is failing or disabled. `test` sends a signed `webhook.test` event (not part
of the feed) to each endpoint of an account, and says what each answered. `enable` resumes a
disabled endpoint where it stopped.
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, on_store, when
from relay.delivery.webhooks import endpoint_key, post
from relay.storage.base import Event

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `webhooks` and its actions."""
    webhooks = commands.add_parser("webhooks", parents=[common], help="the accounts' webhooks")
    webhooks.set_defaults(handler=on_store(run))
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", parents=[common], help="every endpoint and how it is doing")
    test = actions.add_parser("test", parents=[common], help="send a test event to an account's")
    test.add_argument("account")
    enable = actions.add_parser("enable", parents=[common], help="resume a disabled endpoint")
    enable.add_argument("account")
    enable.add_argument("url")


def _row(*fields: object) -> None:
    print("\t".join(str(field) for field in fields))


async def run(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Carry out one `webhooks` action."""
    if args.action == "status":
        return await _status(config, store)
    account = config.account(args.account)
    if account is None:
        print(f"error: no account {args.account!r} in the configuration", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "test":
        return await _test(config, account.id)
    if args.url not in [hook.url for hook in account.webhooks]:
        print(f"error: account {account.id} has no webhook {args.url}", file=sys.stderr)
        return EXIT_USAGE
    if not await store.webhook_enable(endpoint_key(account.id, args.url), now=time.time()):
        print(f"error: {args.url} has not been served yet", file=sys.stderr)
        return EXIT_REFUSED
    _row(account.id, args.url, "enabled")
    return EXIT_OK


async def _status(config: Config, store: Store) -> int:
    states = {state.key: state for state in await store.webhook_states()}
    _row("account", "url", "state", "delivered", "failing_since", "next_attempt", "last_error")
    for account in config.accounts:
        for hook in account.webhooks:
            state = states.get(endpoint_key(account.id, hook.url))
            if state is None:
                _row(account.id, hook.url, "new", 0, "-", "-", "-")
                continue
            health = "disabled" if state.disabled_at else "failing" if state.attempts else "ok"
            _row(
                account.id,
                hook.url,
                health,
                state.delivered,
                when(state.failing_since),
                when(state.next_attempt) if state.attempts else "-",
                state.last_error or "-",
            )
    return EXIT_OK


async def _test(config: Config, account_id: str) -> int:
    account = config.account(account_id)
    assert account is not None  # noqa: S101 - checked by the caller
    if not account.webhooks:
        print(f"error: account {account_id} has no webhooks", file=sys.stderr)
        return EXIT_USAGE
    event = Event(
        f"evt_test_{secrets.token_hex(8)}",
        "webhook.test",
        account_id,
        time.time(),
        None,
        None,
        {"message": "a test from optin-relay webhooks test"},
        "",
    )
    failed = False
    for hook in account.webhooks:
        error = await post(
            hook,
            event,
            seconds=config.webhooks.timeout,
            allow_private=config.webhooks.allow_private,
        )
        _row(hook.url, "ok" if error is None else f"failed: {error}")
        failed |= error is not None
    return EXIT_REFUSED if failed else EXIT_OK
