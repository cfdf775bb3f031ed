"""`optin-relay accounts list | show | suspend | reinstate | terminate | accept-terms | readiness`.

Every change is kept in the store with its reason, actor and time. Suspending holds the
account's mail in the spool; reinstating releases it; terminating purges it (no DSNs).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, actor, on_store, when

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import AccountStateName

_TARGET: dict[str, AccountStateName] = {
    "suspend": "suspended",
    "reinstate": "active",
    "terminate": "terminated",
}


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `accounts` and its actions."""
    parser = commands.add_parser("accounts", parents=[common], help="account standing")
    parser.set_defaults(handler=on_store(run))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="every configured account and its state")
    show = actions.add_parser("show", parents=[common], help="one account and its history")
    show.add_argument("account")
    accept = actions.add_parser(
        "accept-terms", parents=[common], help="record an acceptance of the terms of use"
    )
    accept.add_argument("account")
    accept.add_argument("--version", required=True, help="the version accepted")
    accept.add_argument("--by", required=True, help="who accepted, for the record")
    ready = actions.add_parser(
        "readiness", parents=[common], help="each account against the bulk-sender rules"
    )
    ready.add_argument("account", nargs="?", help="only this account")
    ready.add_argument("--json", action="store_true", help="one JSON document")
    for action in _TARGET:
        change = actions.add_parser(action, parents=[common], help=f"{action} an account")
        change.add_argument("account")
        change.add_argument("--reason", required=True, help="kept in the audit trail")


async def run(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Carry out one `accounts` action."""
    if args.action in ("list", "readiness"):  # every account, or one that may be left out
        return await (_list if args.action == "list" else _readiness)(args, config, store)
    if config.account(args.account) is None:
        print(f"error: no account {args.account!r} in the configuration", file=sys.stderr)
        return EXIT_REFUSED
    if args.action == "show":
        chosen = config.account(args.account)
        assert chosen is not None  # noqa: S101 - checked above
        state = await store.account_state(chosen.id)
        print(f"account\t{chosen.id}\nusername\t{chosen.username}\nstream\t{chosen.stream}")
        print(f"from_domains\t{', '.join(chosen.from_domains)}")
        print(f"state\t{state.state if state else 'active'}")
        for change in await store.account_history(chosen.id):
            print(f"# {when(change.at)} {change.state} by {change.actor}: {change.reason}")
        for done in await store.terms_accepted(chosen.id):
            print(
                f"terms\t{done.version} accepted {when(done.accepted_at)} by {done.accepted_by}"
                f" ip={done.ip or '-'} user_agent={done.user_agent or '-'}"
            )
        return EXIT_OK
    if args.action == "accept-terms":
        return await _accept_terms(args, config, store)
    current = await store.account_state(args.account)
    if current is not None and current.state == "terminated" and args.action != "terminate":
        print("error: the account is terminated; that cannot be undone", file=sys.stderr)
        return EXIT_REFUSED
    target = _TARGET[args.action]
    from relay.accounts.standing import change_state  # noqa: PLC0415 - loads logging

    pending = await change_state(
        store, args.account, target, reason=args.reason, actor=actor(), now=time.time()
    )
    what = {"active": "released", "suspended": "held"}.get(target, "purged")
    print(f"{args.account}\t{target}\t{pending} queued recipients {what}")
    return EXIT_OK


async def _accept_terms(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Record an acceptance given otherwise (signed paper, an email): who and when."""
    from relay.storage.records import TermsAcceptance  # noqa: PLC0415

    if config.terms is not None and args.version != config.terms.version:
        print(
            f"warning: version {args.version} is not the one in force ({config.terms.version})",
            file=sys.stderr,
        )
    done = TermsAcceptance(args.account, args.version, time.time(), f"{args.by} ({actor()})")
    if not await store.accept_terms(done):
        print(f"{args.account} had accepted version {args.version} already")
        return EXIT_OK
    print(f"{args.account}\taccepted terms {args.version}\tby {done.accepted_by}")
    return EXIT_OK


async def _list(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Every configured account and its standing."""
    del args
    states = await store.account_states()
    for account in config.accounts:
        state = states.get(account.id)
        standing = state.state if state else "active"
        print(f"{account.id}\t{account.username}\t{account.stream}\t{standing}")
    return EXIT_OK


async def _readiness(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Print each account's standing against the bulk-sender rules; exit 1 unless all ok."""
    import json  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    from relay.readiness import readiness_of  # noqa: PLC0415

    chosen = [a for a in config.accounts if args.account in (None, a.id)]
    if not chosen:
        print(f"error: no account {args.account!r} in the configuration", file=sys.stderr)
        return EXIT_REFUSED
    found = await readiness_of(config, store, chosen, now=time.time())
    if args.json:
        print(json.dumps([asdict(r) for r in found], indent=2))
    else:
        for ready in found:
            print(f"{ready.account_id}: {'ready' if ready.ready else 'not ready'}")
            for rule in ready.rules:
                print(f"  {rule.state:<8} {rule.name}: {rule.figure}")
    return EXIT_OK if all(r.ready for r in found) else EXIT_REFUSED
