"""`optin-relay domains check [DOMAIN] [--json]`: prove the sending domains, as SES does.

Looks up every account's From domains (or only DOMAIN) in DNS (relay.domains), keeps what it
found in the store, where every relay on it reads it, and prints each requirement with what
it found and, when one is missing or wrong, the record to publish. Exit 1 when any domain is
not verified.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, with_store

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.domainchecks import DomainCheck


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `domains`."""
    domains = commands.add_parser(
        "domains", parents=[common], help="prove the accounts' sending domains in DNS"
    )
    actions = domains.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", parents=[common], help="look the domains up now; print what to publish"
    )
    check.add_argument("domain", nargs="?", help="only this From domain")
    check.add_argument("--json", action="store_true", help="one JSON document")
    domains.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace, config_path: Path) -> int:
    async def work(config: Config, store: Store) -> int:
        return await check(config, store, domain=args.domain, as_json=args.json)

    return with_store(config_path, work)


async def check(config: Config, store: Store, *, domain: str | None, as_json: bool) -> int:
    """Check, keep, print; exit 1 when any domain is not verified."""
    from relay.domains import check_all  # noqa: PLC0415 - DNS and the suffix list: when used
    from relay.resolver import LookupFailed  # noqa: PLC0415

    try:
        kept = await check_all(config, store, domain=domain, now=time.time())
    except LookupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not kept:
        print(f"error: no account sends from {domain or 'any domain'}")
        return EXIT_REFUSED
    if as_json:
        print(json.dumps([asdict(c) for c in kept], indent=2))
    else:
        print("\n\n".join(_text(c) for c in kept))
    return EXIT_OK if all(c.status == "verified" for c in kept) else EXIT_REFUSED


def _text(check: DomainCheck) -> str:
    lines = [f"{check.domain} (account {check.account_id}): {check.status}"]
    if check.status == "unknown":
        lines[0] += f"; last settled: {check.settled}"
    for requirement in check.requirements:
        lines.append(f"  {requirement.state:<8} {requirement.name}: {requirement.found}")
        if requirement.publish and requirement.state != "ok":
            lines.append(f"           publish: {requirement.publish}")
    return "\n".join(lines)
