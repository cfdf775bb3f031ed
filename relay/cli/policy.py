"""`policy replay --since 24h --config NEW.yaml`: what another configuration would have decided.

The journaled transactions of the window (relay.replay) go through NEW.yaml's policies, read
from the store NEW.yaml names (normally the running relay's); nothing is sent or written to it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_USAGE, on_store, when

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.replay import Report
    from relay.storage.base import Store

_LABELS = {
    "now_refused": "accepted, now refused",
    "now_accepted": "refused, now accepted",
    "other_rule": "refused by another rule",
}


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `policy replay`."""
    policy = commands.add_parser("policy", parents=[common], help="try policies on past mail")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        parents=[common],
        help="run the journaled mail of a window through --config's policies; send nothing",
    )
    replay.add_argument("--since", default="24h", help="24h, 7d, or an ISO 8601 time")
    replay.add_argument("--until", default=None, help="end of the window (default: now)")
    replay.add_argument("--json", action="store_true", help="for tools")
    replay.add_argument("--limit", type=int, default=50, help="changes listed one by one")
    replay.set_defaults(handler=on_store(_replay))


async def _replay(args: argparse.Namespace, config: Config, store: Store) -> int:
    import structlog  # noqa: PLC0415

    from relay.cli.explain import parse_since  # noqa: PLC0415
    from relay.replay import replay  # noqa: PLC0415
    from relay.storage import scratch_store  # noqa: PLC0415

    now = time.time()
    try:
        since = parse_since(args.since, now)
        until = parse_since(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if since >= until:
        print("error: --since is not before --until", file=sys.stderr)
        return EXIT_USAGE
    # What the replayed policies log (a halt, a suspension) is the replay's, not the relay's.
    structlog.contextvars.bind_contextvars(replay=True)
    async with scratch_store() as scratch:
        report = await replay(store, scratch, config, since=since, until=until)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(_text(report, args.limit))
    return EXIT_OK


def _text(report: Report, limit: int) -> str:
    head = f"replayed {report.transactions} transactions, {report.recipients} recipients,"
    lines = [f"{head} {when(report.since)} to {when(report.until)}"]
    if not report.changes and not report.halts and not report.halts_before:
        lines.append("no change: the new configuration decides as the running one did")
        return "\n".join(lines)
    lines.append("")
    lines.append(
        "change                     rule                               account  recipients"
    )
    lines += [
        f"{_LABELS[kind]:<26} {rule:<34} {account:<8} {count}"
        for kind, rule, account, count in report.summary()
    ]
    lines += [
        f"halt (new)                 {h['reason']:<34} {h['account']:<8} at {when(h['at'])}"
        for h in report.halts
    ]
    lines += [
        f"halt (no longer)           {h['reason']:<34} {h['account']:<8} at {when(h['at'])}"
        for h in report.halts_before
        if not any(n["account"] == h["account"] for n in report.halts)
    ]
    if report.changes:
        lines.append("")
        for change in report.changes[:limit]:
            who = f"<{change.recipient}>" if change.recipient else "(whole transaction)"
            lines.append(
                f"{when(change.at)}  {change.message_id}  {who}  {_said(change.before)}"
                f" -> {_said(change.after)}"
            )
        if len(report.changes) > limit:
            lines.append(f"... {len(report.changes) - limit} more (--limit, or --json)")
    return "\n".join(lines)


def _said(outcome: tuple[str, str | None]) -> str:
    verdict, rule = outcome
    return f"{verdict} {rule}" if rule else verdict
