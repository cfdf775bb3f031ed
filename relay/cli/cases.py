"""`optin-relay complaints ingest`, `cases list | show | appeal | resolve` and `stats`.

`complaints ingest FILE...` acts on each report file as the fbl@ mailbox would (suppression,
case, notice), attributing by the From domain too when the relay's markers are missing: the
abuse desk vouches for what it feeds in. `-` reads one report from stdin.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, actor, on_store, when
from relay.storage.records import STAT_KINDS

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.feedback.cases import Decision
    from relay.storage.base import Store
    from relay.storage.records import Case
    from relay.tokens import TokenCodec

MAX_REPORT = 32 * 1024 * 1024


@dataclass(frozen=True)
class _Context:
    config: Config
    tokens: TokenCodec


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `complaints`, `cases` and `stats`."""
    complaints = commands.add_parser("complaints", parents=[common], help="complaint intake")
    complaints.set_defaults(handler=on_store(ingest))
    actions = complaints.add_subparsers(dest="action", required=True, metavar="ACTION")
    files = actions.add_parser("ingest", parents=[common], help="act on complaint report files")
    files.add_argument("files", nargs="+", metavar="FILE", help="RFC 5322 message files, or -")

    parser = commands.add_parser("cases", parents=[common], help="complaint cases")
    parser.set_defaults(handler=on_store(run_cases))
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="cases, newest first")
    listing.add_argument("--account")
    listing.add_argument(
        "--status", choices=["open", "awaiting_proof", "upheld", "dismissed"], default=None
    )
    listing.add_argument("--limit", type=int, default=100)
    show = actions.add_parser("show", parents=[common], help="one case, its history and report")
    show.add_argument("case")
    appeal = actions.add_parser("appeal", parents=[common], help="attach the account's evidence")
    appeal.add_argument("case")
    appeal.add_argument("--evidence", required=True, type=Path, help="file with the opt-in proof")
    resolve = actions.add_parser("resolve", parents=[common], help="dismiss or uphold a case")
    resolve.add_argument("case")
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument("--dismiss", action="store_true")
    decision.add_argument("--uphold", action="store_true")
    resolve.add_argument("--reason", required=True, help="kept in the case history")

    stats = commands.add_parser("stats", parents=[common], help="per-account statistics")
    stats.set_defaults(handler=on_store(run_stats))
    stats.add_argument("--account")
    stats.add_argument("--window", default="30d", help="trailing window (default 30d)")
    stats.add_argument("--json", action="store_true", help="one JSON object per account")


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read(MAX_REPORT + 1)
    with Path(name).open("rb") as handle:
        return handle.read(MAX_REPORT + 1)


async def ingest(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Ingest each report file; refuse (exit 1) if any was malformed or unreadable."""
    from relay.clock import SystemClock  # noqa: PLC0415 - what a command needs, when it runs
    from relay.feedback.intake import Feedback  # noqa: PLC0415
    from relay.runtime import make_codec  # noqa: PLC0415

    clock = SystemClock()
    context = _Context(config, make_codec(config, clock))
    feedback = Feedback(store, lambda: context, clock)
    status = EXIT_OK
    for name in args.files:
        try:
            content = _read(name)
        except OSError as exc:
            print(f"{name}\terror\t{exc.strerror or exc}", file=sys.stderr)
            status = EXIT_REFUSED
            continue
        if len(content) > MAX_REPORT:
            print(f"{name}\terror\tlarger than {MAX_REPORT} bytes", file=sys.stderr)
            status = EXIT_REFUSED
            continue
        result = await feedback.complaint(content, source="cli", trusted=True)
        if result.outcome == "malformed":
            status = EXIT_REFUSED
        print(
            f"{name}\t{result.outcome}\t{result.case_id or '-'}\t{result.account_id or '-'}\t"
            f"{result.recipient or '-'}\t{result.cause}"
        )
    return status


def _line(case: Case) -> str:
    fine = f"{case.fine_cents / 100:.2f}" if case.fine_cents else "-"
    return (
        f"{case.id}\t{case.status}\t{case.account_id}\t{case.recipient}\t"
        f"opened={when(case.opened_at)}\tdeadline={when(case.deadline)}\tfine={fine}"
    )


async def run_cases(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Carry out one `cases` action."""
    from relay.feedback import cases  # noqa: PLC0415

    now = time.time()
    if args.action == "list":
        for case in await store.cases(
            account_id=args.account, status=args.status, limit=args.limit
        ):
            print(_line(case))
        return EXIT_OK
    try:
        if args.action == "show":
            return await _show(store, args.case)
        if args.action == "appeal":
            evidence = args.evidence.read_text(encoding="utf-8", errors="replace")
            case = await cases.appeal(store, args.case, evidence, actor=actor(), now=now)
        else:
            decision: Decision = "dismiss" if args.dismiss else "uphold"
            case = await cases.resolve(
                store, config, args.case, decision, actor=actor(), reason=args.reason, now=now
            )
    except cases.CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: {args.evidence}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(_line(case))
    return EXIT_OK


async def _show(store: Store, case_id: str) -> int:
    from relay.feedback import cases  # noqa: PLC0415

    case = await store.case(case_id)
    if case is None:
        raise cases.CaseError(f"no case {case_id}")
    print(_line(case))
    print(f"reference\t{case.reference}\nmessage_id\t{case.message_id or '-'}")
    print(f"source\t{case.source}\nfeedback_type\t{case.feedback_type}")
    print(f"resolution\t{case.resolution or '-'}\nproof\t{case.proof or '-'}")
    print(f"appealed\t{when(case.appealed_at)}\nresolved\t{when(case.resolved_at)}")
    for event in await store.case_events(case.id):
        print(
            f"# {when(event.at)} {event.action} -> {event.status} by {event.actor}: {event.detail}"
        )
    if case.evidence:
        print("--- evidence\n" + case.evidence.rstrip("\n"))
    print("--- report\n" + case.report.decode("utf-8", "replace").rstrip("\n"))
    return EXIT_OK


def _rate(events: int, delivered: int) -> float | None:
    return round(events / delivered, 6) if delivered else None


async def run_stats(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Print each account's numbers over the window, with complaint and bounce rates."""
    from relay.configtypes import parse_duration  # noqa: PLC0415

    window = parse_duration(args.window)
    since = time.time() - window
    totals = await store.stats(since=since, account_id=args.account)
    from relay.feedback.cases import fines_by_account  # noqa: PLC0415

    fines = await fines_by_account(store, since=since, account_id=args.account)
    ids = [args.account] if args.account else sorted({a.id for a in config.accounts} | set(totals))
    if not args.json:
        print("account\t" + "\t".join(STAT_KINDS) + "\tcomplaint_rate\tbounce_rate\tfines_usd")
    for account_id in ids:
        counts = {kind: totals.get(account_id, {}).get(kind, 0) for kind in STAT_KINDS}
        rates = {
            "complaint_rate": _rate(counts["complaint"], counts["delivered"]),
            "bounce_rate": _rate(counts["bounce"], counts["delivered"]),
        }
        fined = fines.get(account_id, 0) / 100
        if args.json:
            print(
                json.dumps(
                    {"account": account_id, "window": window, **counts, **rates, "fines_usd": fined}
                )
            )
            continue
        shown = ["-" if rate is None else f"{rate:.4%}" for rate in rates.values()]
        print(
            "\t".join([account_id, *(str(counts[k]) for k in STAT_KINDS), *shown, f"{fined:.2f}"])
        )
    return EXIT_OK
