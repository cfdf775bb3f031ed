"""`optin-relay webhooks list | status | test | enable | replay`: the accounts' endpoints.

`list` shows the configured endpoints and the events each gets; `status` shows how each is
doing: how many events it got, whether it is failing or disabled. `test ACCOUNT` sends a signed
`webhook.test` event (not part of the feed) to each endpoint of an account, and says what each
answered. `enable ACCOUNT URL` resumes a disabled endpoint where it stopped. `replay ACCOUNT URL
--since WHEN` sends the events from WHEN (`24h` ago, or an ISO 8601 time) again, in order.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, on_store, when

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
    actions.add_parser("list", parents=[common], help="the configured endpoints")
    actions.add_parser("status", parents=[common], help="every endpoint and how it is doing")
    test = actions.add_parser("test", parents=[common], help="send a test event to an account's")
    test.add_argument("account")
    enable = actions.add_parser("enable", parents=[common], help="resume a disabled endpoint")
    enable.add_argument("account")
    enable.add_argument("url")
    replay = actions.add_parser("replay", parents=[common], help="send events from a time again")
    replay.add_argument("account")
    replay.add_argument("url")
    replay.add_argument("--since", required=True, help="24h (ago), 3d, or an ISO 8601 time")


def _row(*fields: object) -> None:
    print("\t".join(str(field) for field in fields))


async def run(args: argparse.Namespace, config: Config, store: Store) -> int:  # noqa: PLR0911 - one per action
    """Carry out one `webhooks` action."""
    if args.action == "status":
        return await _status(config, store)
    if args.action == "list":
        return _list(config)
    account = config.account(args.account)
    if account is None:
        print(f"error: no account {args.account!r} in the configuration", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "test":
        return await _test(config, account.id)
    if args.url not in [hook.url for hook in account.webhooks]:
        print(f"error: account {account.id} has no webhook {args.url}", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "replay":
        return await _replay(store, account.id, args.url, args.since)
    return await _enable(store, account.id, args.url)


def _list(config: Config) -> int:
    for account in config.accounts:
        for hook in account.webhooks:
            _row(account.id, hook.url, ",".join(hook.events) or "all events")
    return EXIT_OK


async def _replay(store: Store, account_id: str, url: str, since_text: str) -> int:
    from relay.delivery.webhooks import endpoint_key  # noqa: PLC0415 - aiohttp: only when run
    from relay.logging import get_logger  # noqa: PLC0415 - structlog: only when run

    since = _since(since_text)
    if since is None:
        print(f"error: --since {since_text!r}: a duration or an ISO 8601 time", file=sys.stderr)
        return EXIT_USAGE
    key = endpoint_key(account_id, url)
    if not await store.webhook_rewind(key, account_id, since=since, now=time.time()):
        print(f"error: {url} has not been served yet", file=sys.stderr)
        return EXIT_REFUSED
    state = next(s for s in await store.webhook_states() if s.key == key)
    queued, _ = await store.events_behind(account_id, state.cursor)
    log = get_logger(__name__)
    log.info("webhook_replayed", account_id=account_id, url=url, since=since, events=queued)
    _row(account_id, url, f"replaying {queued} events from {when(since)}")
    return EXIT_OK


async def _enable(store: Store, account_id: str, url: str) -> int:
    from relay.delivery.webhooks import endpoint_key  # noqa: PLC0415 - aiohttp: only when run

    if not await store.webhook_enable(endpoint_key(account_id, url), now=time.time()):
        print(f"error: {url} has not been served yet", file=sys.stderr)
        return EXIT_REFUSED
    _row(account_id, url, "enabled")
    return EXIT_OK


def _since(text: str) -> float | None:
    """`24h` (that long ago) or an ISO 8601 time, as Unix time; None if it is neither."""
    from relay.configtypes import parse_duration  # noqa: PLC0415 - pydantic: only when run

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def _status(config: Config, store: Store) -> int:
    """Each endpoint: its health, its place in the feed and how far behind, who serves it."""
    from relay.delivery.webhooks import endpoint_key  # noqa: PLC0415 - aiohttp: only when run

    states = {state.key: state for state in await store.webhook_states()}
    now = time.time()
    _row(
        "account",
        "url",
        "state",
        "delivered",
        "cursor",
        "behind",
        "oldest_waiting",
        "lease",
        "failing_since",
        "next_attempt",
        "last_error",
    )
    for account in config.accounts:
        for hook in account.webhooks:
            state = states.get(endpoint_key(account.id, hook.url))
            if state is None:
                _row(account.id, hook.url, "new", 0, "-", "-", "-", "-", "-", "-", "-")
                continue
            health = "disabled" if state.disabled_at else "failing" if state.attempts else "ok"
            behind, oldest = await store.events_behind(account.id, state.cursor)
            holder = state.lease.split(":", 1)[0] if state.lease else None
            held = "-" if holder is None or state.lease_until <= now else holder
            _row(
                account.id,
                hook.url,
                health,
                state.delivered,
                state.cursor or "-",
                behind,
                "-" if oldest is None else f"{max(now - oldest, 0):.0f}s",
                held if held == "-" else f"{held} until {when(state.lease_until)}",
                when(state.failing_since),
                when(state.next_attempt) if state.attempts else "-",
                state.last_error or "-",
            )
    return EXIT_OK


async def _test(config: Config, account_id: str) -> int:
    from relay.delivery.webhooks import post  # noqa: PLC0415 - aiohttp: only when run
    from relay.storage.records import Event, new_event_id  # noqa: PLC0415

    account = config.account(account_id)
    assert account is not None  # noqa: S101 - checked by the caller
    if not account.webhooks:
        print(f"error: account {account_id} has no webhooks", file=sys.stderr)
        return EXIT_USAGE
    event = Event(
        new_event_id(),  # the documented format: a CRM may validate ids
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
