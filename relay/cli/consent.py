"""`optin-relay consent import | show | export`: opt-in records, the proof of permission.

Import reads the CSV twice: first to check every row and the list as a whole (nothing is stored
when the list looks suspicious: very large, many role addresses, many invalid or duplicate
addresses; `--force` overrides after review), then to store it in batches with a progress bar.
Rows lacking the evidence their method needs are refused with their line numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Progress, on_store
from relay.storage.records import Consent, normalize_address

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import ConsentMethod

BATCH = 5000
ROLE_PARTS = frozenset(
    (
        "abuse",
        "admin",
        "billing",
        "contact",
        "hello",
        "help",
        "hostmaster",
        "info",
        "marketing",
        "news",
        "noc",
        "no-reply",
        "noreply",
        "office",
        "postmaster",
        "sales",
        "security",
        "support",
        "team",
        "webmaster",
    )
)
_ADDRESS = re.compile(r"^[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
LARGE_LIST = 100_000
ROLE_SHARE = 0.05
INVALID_SHARE = 0.02
DUPLICATE_SHARE = 0.05


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `consent` and its actions."""
    parser = commands.add_parser("consent", parents=[common], help="opt-in records")
    parser.set_defaults(handler=on_store(run))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imports = actions.add_parser("import", parents=[common], help="import opt-in records (CSV)")
    imports.add_argument("file", help="CSV: address, subscribed_at and evidence columns")
    imports.add_argument("--account", required=True)
    imports.add_argument("--list", default="default", help="list id when the CSV has no 'list'")
    imports.add_argument(
        "--method", choices=("confirmed", "single", "imported"), default="imported"
    )
    imports.add_argument("--source", default=None, help="default: the file name")
    imports.add_argument("--force", action="store_true", help="import a list that was flagged")
    show = actions.add_parser("show", parents=[common], help="the records of one address")
    show.add_argument("address")
    show.add_argument("--account")
    export = actions.add_parser("export", parents=[common], help="records as JSON (for appeals)")
    export.add_argument("--account")
    export.add_argument("--address")


def _time(value: str) -> float | None:
    """ISO 8601 (a date alone, or with time; naive means UTC) or epoch seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _record(
    row: dict[str, str], args: argparse.Namespace, source: str
) -> tuple[Consent | None, str]:
    """The row as an opt-in record, or None and why it is refused."""
    address = row.get("address", "")
    if not _ADDRESS.match(address):
        return None, "invalid address"
    method = (row.get("method") or args.method).lower()
    if method not in ("confirmed", "single", "imported"):
        return None, f"unknown method {method!r}"
    subscribed = _time(row.get("subscribed_at", ""))
    if subscribed is None:
        return None, "subscribed_at missing or unreadable"
    confirmed = _time(row.get("confirmed_at", ""))
    ip = row.get("ip") or None
    evidence = row.get("evidence") or None
    if method == "confirmed" and (confirmed is None or confirmed < subscribed or ip is None):
        return None, "confirmed opt-in needs confirmed_at (after subscribed_at) and ip"
    if method != "confirmed" and evidence is None and ip is None:
        return None, "needs evidence or ip"
    kind: ConsentMethod = method  # type: ignore[assignment]
    return (
        Consent(
            account_id=args.account,
            address=normalize_address(address),
            list_id=row.get("list") or args.list,
            method=kind,
            subscribed_at=subscribed,
            confirmed_at=confirmed,
            source=row.get("source") or source,
            ip=ip,
            user_agent=row.get("user_agent") or None,
            consent_text_version=row.get("consent_text_version") or None,
            evidence=evidence,
        ),
        "",
    )


def _rows(handle: TextIO) -> csv.DictReader[str]:
    return csv.DictReader(handle)


def _clean(row: dict[str, str | None]) -> dict[str, str]:
    return {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}


def _flags(total: int, roles: int, invalid: int, duplicates: int) -> list[str]:
    flags = []
    if total > LARGE_LIST:
        flags.append(f"very large: {total} rows (more than {LARGE_LIST})")
    if total and roles / total > ROLE_SHARE:
        flags.append(f"role addresses: {roles} ({roles / total:.0%}) such as info@ or sales@")
    if total and invalid / total > INVALID_SHARE:
        flags.append(f"invalid addresses: {invalid} ({invalid / total:.0%})")
    if total and duplicates / total > DUPLICATE_SHARE:
        flags.append(f"duplicate addresses: {duplicates} ({duplicates / total:.0%})")
    return flags


async def run(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Carry out one `consent` action."""
    if args.action == "import":
        if config.account(args.account) is None:
            print(f"error: no account {args.account!r} in the configuration", file=sys.stderr)
            return EXIT_REFUSED
        return await _import(args, store)
    if args.action == "show":
        records = await _all(store, account_id=args.account, address=args.address)
        if not records:
            print(f"{normalize_address(args.address)}\tno opt-in record")
        for record in records:
            print(json.dumps(asdict(record), sort_keys=True))
        return EXIT_OK
    return await _export(store, args.account, args.address, sys.stdout)


async def _all(store: Store, *, account_id: str | None, address: str | None) -> list[Consent]:
    found: list[Consent] = []
    after = ("", "", "")
    while page := await store.consents(
        account_id=account_id, address=address, after=after, limit=BATCH
    ):
        found.extend(page)
        last = page[-1]
        after = (last.account_id, last.address, last.list_id)
    return found


async def _export(store: Store, account: str | None, address: str | None, out: TextIO) -> int:
    out.write("[")
    first = True
    after = ("", "", "")
    while page := await store.consents(
        account_id=account, address=address, after=after, limit=BATCH
    ):
        for record in page:
            out.write(("\n" if first else ",\n") + json.dumps(asdict(record), sort_keys=True))
            first = False
        last = page[-1]
        after = (last.account_id, last.address, last.list_id)
    out.write("\n]\n")
    return EXIT_OK


def _survey(
    args: argparse.Namespace, source: str
) -> tuple[int, list[tuple[int, str]], list[str]] | None:
    """Check every row and the list as a whole; None when the file has no address column."""
    total = roles = invalid = duplicates = 0
    refused: list[tuple[int, str]] = []
    seen: set[bytes] = set()
    with open(args.file, newline="", encoding="utf-8") as handle:  # noqa: PTH123
        reader = _rows(handle)
        if "address" not in {(name or "").strip().lower() for name in reader.fieldnames or []}:
            return None
        for raw in reader:
            total += 1
            record, why = _record(_clean(raw), args, source)
            if record is None:
                refused.append((reader.line_num, why))
                invalid += why == "invalid address"
                continue
            digest = hashlib.blake2b(record.address.encode(), digest_size=8).digest()
            duplicates += digest in seen
            seen.add(digest)
            roles += record.address.partition("@")[0] in ROLE_PARTS
    return total, refused, _flags(total, roles, invalid, duplicates)


async def _store_rows(args: argparse.Namespace, store: Store, source: str, total: int) -> int:
    progress = Progress(total, sys.stderr)
    stored = read = 0
    batch: list[Consent] = []
    with open(args.file, newline="", encoding="utf-8") as handle:  # noqa: PTH123, ASYNC230
        for raw in _rows(handle):
            read += 1
            record, _ = _record(_clean(raw), args, source)
            if record is not None:
                batch.append(record)
            if len(batch) >= BATCH:
                stored += await store.record_consents(batch)
                batch = []
                progress.update(read, stored)
    if batch:
        stored += await store.record_consents(batch)
    progress.update(read, stored)
    progress.close()
    return stored


async def _import(args: argparse.Namespace, store: Store) -> int:
    source = args.source or args.file.rsplit("/", 1)[-1]
    survey = _survey(args, source)
    if survey is None:
        print("error: the CSV needs an 'address' column", file=sys.stderr)
        return EXIT_USAGE
    total, refused, flags = survey
    for flag in flags:
        print(f"flag: {flag}", file=sys.stderr)
    if flags and not args.force:
        print("nothing stored: review the list, then import with --force", file=sys.stderr)
        return EXIT_REFUSED
    stored = await _store_rows(args, store, source, total)
    print(f"read {total} rows: {stored} stored, {len(refused)} refused")
    for line, why in refused:  # every refused row, by its line in the file
        print(f"refused line {line}: {why}", file=sys.stderr)
    return EXIT_OK
