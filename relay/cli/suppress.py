"""`optin-relay suppress add | remove | check | list | import | export`: the suppression list.

CSV is streamed both ways (constant memory, any size). Imports show a progress bar on a
terminal, and a line every 10% otherwise. Removing needs a reason and is audited.
"""

from __future__ import annotations

import csv
import sys
import time
from typing import TYPE_CHECKING, TextIO

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Progress, actor, on_store, when
from relay.storage.records import GLOBAL_SCOPE, REASONS, Suppression, normalize_address

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store

BATCH = 5000


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `suppress` and its actions."""
    suppress = commands.add_parser("suppress", parents=[common], help="the suppression list")
    suppress.set_defaults(handler=on_store(run))
    actions = suppress.add_subparsers(dest="action", required=True, metavar="ACTION")

    def scoped(parser: argparse.ArgumentParser, *, required: bool) -> None:
        scope = parser.add_mutually_exclusive_group(required=required)
        scope.add_argument("--account", help="one account's list")
        scope.add_argument(
            "--global", dest="all_accounts", action="store_true", help="every account"
        )

    add = actions.add_parser("add", parents=[common], help="suppress an address")
    add.add_argument("address")
    scoped(add, required=True)
    add.add_argument("--reason", choices=REASONS, default="manual")
    add.add_argument("--source", default="cli")

    remove = actions.add_parser("remove", parents=[common], help="lift a suppression (audited)")
    remove.add_argument("address")
    scoped(remove, required=True)
    remove.add_argument("--reason", required=True, help="why (kept in the audit record)")

    check = actions.add_parser("check", parents=[common], help="is an address suppressed?")
    check.add_argument("address")
    check.add_argument("--account", help="as seen by this account (own and global lists)")

    listing = actions.add_parser("list", parents=[common], help="suppressed addresses")
    scoped(listing, required=False)
    listing.add_argument("--limit", type=int, default=1000)

    imports = actions.add_parser("import", parents=[common], help="add addresses from a CSV file")
    imports.add_argument(
        "file", help="CSV with an 'address' column (optional 'reason'); - for stdin"
    )
    scoped(imports, required=True)
    imports.add_argument("--reason", choices=REASONS, default="import")
    imports.add_argument(
        "--source", default=None, help="recorded with each row (default: file name)"
    )

    export = actions.add_parser("export", parents=[common], help="write the list as CSV to stdout")
    scoped(export, required=False)


def _scope(args: argparse.Namespace) -> str | None:
    if getattr(args, "all_accounts", False):
        return GLOBAL_SCOPE
    return getattr(args, "account", None)


def _row(*fields: object) -> None:
    print("\t".join(str(field) for field in fields))


def _describe(entry: Suppression) -> list[object]:
    return [entry.scope, entry.reason, entry.source, when(entry.created_at)]


async def run(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Carry out one `suppress` action."""
    scope = _scope(args)
    if scope not in (None, GLOBAL_SCOPE) and config.account(scope) is None:
        print(f"warning: no account {scope!r} in the configuration", file=sys.stderr)
    if args.action == "add":
        return await _add(args, store, scope or GLOBAL_SCOPE)
    if args.action == "remove":
        return await _remove(args, store, scope or GLOBAL_SCOPE)
    if args.action == "check":
        return await _check(args, store)
    if args.action == "list":
        return await _list(store, scope, args.limit)
    if args.action == "import":
        return await _import(args, store, scope or GLOBAL_SCOPE, time.time())
    return await _export(store, scope, sys.stdout)


async def _add(args: argparse.Namespace, store: Store, scope: str) -> int:
    if "@" not in args.address:
        print(f"error: not an address: {args.address}", file=sys.stderr)
        return EXIT_USAGE
    entry = Suppression(args.address, scope, args.reason, args.source, time.time())
    added = await store.suppress(entry, actor=actor())
    _row(normalize_address(args.address), scope, "added" if added else "already suppressed")
    return EXIT_OK


async def _remove(args: argparse.Namespace, store: Store, scope: str) -> int:
    removed = await store.unsuppress(
        args.address, scope, reason=args.reason, actor=actor(), now=time.time()
    )
    if not removed:
        print(f"error: {args.address} is not suppressed for {scope}", file=sys.stderr)
        return EXIT_REFUSED
    _row(normalize_address(args.address), scope, "removed")
    return EXIT_OK


async def _entries_for(store: Store, address: str) -> list[Suppression]:
    address = normalize_address(address)
    page = await store.suppressions(after=(address, ""), limit=1000)
    return [s for s in page if s.address == address]


async def _check(args: argparse.Namespace, store: Store) -> int:
    entries = await _entries_for(store, args.address)
    if args.account:
        entries = [e for e in entries if e.scope in (args.account, GLOBAL_SCOPE)]
    if not entries:
        _row(normalize_address(args.address), "not suppressed")
    for entry in entries:
        _row(entry.address, "suppressed", *_describe(entry))
    for change in await store.audit(args.address):
        what = f"{change.action} {change.scope} by {change.actor}"
        print(f"# {when(change.at)} {what}: {change.reason}")
    return EXIT_OK


async def _list(store: Store, scope: str | None, limit: int) -> int:
    after = ("", "")
    shown = 0
    while shown < limit:
        page = await store.suppressions(scope=scope, after=after, limit=min(1000, limit - shown))
        if not page:
            break
        for entry in page:
            _row(entry.address, *_describe(entry))
        shown += len(page)
        after = (page[-1].address, page[-1].scope)
    return EXIT_OK


async def _export(store: Store, scope: str | None, out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(["address", "scope", "reason", "source", "created_at"])
    after = ("", "")
    while page := await store.suppressions(scope=scope, after=after, limit=BATCH):
        writer.writerows([e.address, e.scope, e.reason, e.source, when(e.created_at)] for e in page)
        after = (page[-1].address, page[-1].scope)
    return EXIT_OK


async def _import(args: argparse.Namespace, store: Store, scope: str, now: float) -> int:
    source = args.source or ("stdin" if args.file == "-" else args.file.rsplit("/", 1)[-1])
    total = None
    if args.file != "-":
        with open(args.file, encoding="utf-8", errors="replace") as counting:  # noqa: PTH123, ASYNC230
            total = max(sum(1 for _ in counting) - 1, 0)
    handle = sys.stdin if args.file == "-" else open(args.file, newline="", encoding="utf-8")  # noqa: PTH123, ASYNC230, SIM115
    progress = Progress(total, sys.stderr)
    read = added = 0
    refused: list[int] = []
    try:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower() for name in reader.fieldnames or []}
        if "address" not in fields:
            print("error: the CSV needs an 'address' column", file=sys.stderr)
            return EXIT_USAGE
        batch: list[Suppression] = []
        for row in reader:
            read += 1
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}  # noqa: PLW2901
            address = row.get("address", "")
            reason = row.get("reason") or args.reason
            if "@" not in address or " " in address or reason not in REASONS:
                refused.append(reader.line_num)
                continue
            batch.append(Suppression(address, scope, reason, source, now))
            if len(batch) >= BATCH:
                added += await store.suppress_many(batch)
                batch = []
                progress.update(read, added)
        if batch:
            added += await store.suppress_many(batch)
        progress.update(read, added)
        progress.close()
    finally:
        if handle is not sys.stdin:
            handle.close()
    known = read - added - len(refused)
    print(f"read {read} rows: {added} added, {known} already suppressed, {len(refused)} refused")
    if refused:
        shown = ", ".join(map(str, refused[:20])) + (" ..." if len(refused) > 20 else "")  # noqa: PLR2004
        print(f"refused rows (line numbers): {shown}", file=sys.stderr)
    return EXIT_OK
