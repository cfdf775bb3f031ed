"""`queue list|show|retry|hold|release|delete`: the delivery queue as Postfix users know it.

`retry` is `postqueue -f` / `-i`, `hold` and `release` are `postsuper -h` / `-H`, `delete` is
`postsuper -d` (with `--dsn`, the sender is told), `show` is `postcat -q`. Every change is
written to the store's audit trail (who, when, why) and logged; the running relays see it at
their next poll of the store (`delivery.poll_interval`, one second by default), every node alike.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, actor, on_store, when
from relay.storage.records import QUEUE_STATES, QueueAction

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import NewMessage, QueuedMessage

DELETED_REPLY = "550 5.0.0 Deleted from the queue by the relay's operator"


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `queue` and its actions."""
    queue = commands.add_parser("queue", parents=[common], help="inspect and change the queue")
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="pending recipients")
    listing.add_argument("--account", help="of one account")
    listing.add_argument("--state", choices=QUEUE_STATES, help="in one state")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=on_store(_list))
    show = actions.add_parser("show", parents=[common], help="one message (as postcat -q)")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=on_store(_show))
    for name, text in (
        ("retry", "make deferred mail due now (as postqueue -f / -i)"),
        ("hold", "keep messages from delivery (as postsuper -h)"),
        ("release", "let held messages go (as postsuper -H)"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("ids", nargs="*", metavar="ID", help="queue ids (messages)")
        action.add_argument("--account", help="every pending message of one account")
        if name == "retry":
            action.add_argument("--all", action="store_true", help="everything pending")
        action.add_argument("--reason", help="why, for the audit trail")
        action.set_defaults(handler=on_store(_change))
    delete = actions.add_parser("delete", parents=[common], help="delete (as postsuper -d)")
    delete.add_argument("ids", nargs="+", metavar="ID", help="queue ids (messages)")
    delete.add_argument("--dsn", action="store_true", help="send the sender a failure notice")
    delete.add_argument("--reason", help="why, for the audit trail")
    delete.set_defaults(handler=on_store(_delete))


async def _list(args: argparse.Namespace, config: Config, store: Store) -> int:
    del config
    entries = await store.queue(
        args.limit, account_id=args.account, state=args.state, now=time.time()
    )
    for entry in entries:
        if args.json:
            print(json.dumps(asdict(entry)))
            continue
        print(
            f"{entry.message_id}\t{entry.account_id or '-'}\t{entry.state}\t<{entry.mail_from}>\t"
            f"<{entry.recipient}>\tattempts={entry.attempts}\tnext={when(entry.next_attempt)}\t"
            f"{entry.last_reply or ''}"
        )
    return EXIT_OK


def _headers(message: QueuedMessage) -> str:
    if message.content is None:
        return ""
    head = message.content.split(b"\r\n\r\n", 1)[0]
    return head.decode("utf-8", "replace").replace("\r\n", "\n")


async def _show(args: argparse.Namespace, config: Config, store: Store) -> int:
    del config
    message = await store.queued_message(args.id)
    if message is None:
        print(f"error: no message {args.id} in the queue", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        data = asdict(message)
        data["content"] = None
        data["headers"] = _headers(message)
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"queue id:  {message.id}")
    print(f"account:   {message.account_id or '-'} ({message.kind})")
    print(f"sender:    <{message.mail_from}>")
    print(f"received:  {when(message.received_at)}  size {message.size} bytes")
    if message.held_at is not None:
        print(f"held:      since {when(message.held_at)}")
    if message.completed_at is not None:
        print(f"completed: {when(message.completed_at)}")
    print("recipients:")
    now = time.time()
    for r in message.recipients:
        status = "active" if r.status == "pending" and r.leased_until > now else r.status
        next_try = f"  next {when(r.next_attempt)}" if r.status == "pending" else ""
        print(f"  <{r.recipient}>  {status}  attempts {r.attempts}{next_try}")
        if r.last_reply:
            print(f"      {r.last_reply}")
    headers = _headers(message)
    print("headers:" if headers else "headers:   (content dropped: no recipient pending)")
    if headers:
        print(headers)
    return EXIT_OK


def _scope(args: argparse.Namespace) -> tuple[list[str] | None, str | None] | None:
    """The messages a change is about; None (after an error message) when not one scope."""
    everything = getattr(args, "all", False)
    if sum([bool(args.ids), everything, args.account is not None]) != 1:
        choices = (
            "queue ids, or --all, or --account"
            if args.queue_command == "retry"
            else ("queue ids, or --account")
        )
        print(f"error: name {choices} (one of them)", file=sys.stderr)
        return None
    return (args.ids or None), args.account


async def _change(args: argparse.Namespace, config: Config, store: Store) -> int:
    from relay.logging import get_logger  # noqa: PLC0415 - structlog: only when run

    del config
    log = get_logger(__name__)
    scope = _scope(args)
    if scope is None:
        return EXIT_USAGE
    ids, account = scope
    command: str = args.queue_command
    action = QueueAction(
        at=time.time(),
        actor=actor(),
        action="retry" if command == "retry" else "hold" if command == "hold" else "release",
        reason=args.reason,
    )
    fields = {"actor": action.actor, "ids": ids, "account": account, "reason": args.reason}
    if command == "retry":
        count = await store.retry_now(
            now=action.at, action=action, message_ids=ids, account_id=account
        )
        log.info("queue_retried", count=count, **fields)
        print(f"{count} recipients due now")
        return EXIT_OK
    changed = await store.hold(
        hold=command == "hold", action=action, message_ids=ids, account_id=account
    )
    if command == "hold":
        log.info("queue_held", count=len(changed), **fields)
    else:
        log.info("queue_released", count=len(changed), **fields)
    verb = "held" if command == "hold" else "released"
    print(f"{len(changed)} messages {verb}" + (f": {' '.join(changed)}" if changed else ""))
    if ids and len(changed) < len(ids):
        missed = sorted(set(ids) - set(changed))
        state = "already held" if command == "hold" else "not held"
        print(f"not changed (unknown, done, or {state}): {' '.join(missed)}", file=sys.stderr)
    return EXIT_OK


def _dsns(config: Config, message: QueuedMessage, now: float) -> list[NewMessage]:
    """A failure notice to the sender for each pending recipient (none for a null sender).

    None for a recipient whose sender asked for no failure notices (NOTIFY, RFC 3461).
    """
    from relay.delivery.dsn import build_dsn  # noqa: PLC0415
    from relay.delivery.upstream import SendResult  # noqa: PLC0415
    from relay.mail import dsnrequest  # noqa: PLC0415
    from relay.storage.records import NewMessage, new_message_id  # noqa: PLC0415

    if not message.mail_from or message.kind != "message" or message.content is None:
        return []
    pending = [
        (r, request)
        for r in message.recipients
        if r.status == "pending" and (request := dsnrequest.read(r.dsn, message.dsn)).on_failure
    ]
    return [
        NewMessage(
            id=new_message_id(),
            account_id=message.account_id,
            mail_from="",
            recipients=(message.mail_from,),
            content=build_dsn(
                reporting_host=config.hostname,
                original=message.content,
                message_id=message.id,
                mail_from=message.mail_from,
                recipient=r.recipient,
                result=SendResult("permanent", DELETED_REPLY),
                arrival=message.received_at,
                now=now,
                expired=False,
                request=request,
            ),
            received_at=now,
            kind="dsn",
        )
        for r, request in pending
    ]


async def _delete(args: argparse.Namespace, config: Config, store: Store) -> int:
    from relay.logging import get_logger  # noqa: PLC0415 - structlog: only when run

    log = get_logger(__name__)
    now = time.time()
    action = QueueAction(
        at=now,
        actor=actor(),
        action="delete_dsn" if args.dsn else "delete",
        reason=args.reason,
    )
    dsns: list[NewMessage] = []
    if args.dsn:
        for message_id in args.ids:
            message = await store.queued_message(message_id)
            if message is not None:
                dsns += _dsns(config, message, now)
    count = await store.delete_queued(args.ids, action=action, reply=DELETED_REPLY, dsns=dsns)
    log.info(
        "queue_deleted",
        count=count,
        dsns=len(dsns),
        actor=action.actor,
        ids=args.ids,
        reason=args.reason,
    )
    print(f"{count} recipients deleted" + (f", {len(dsns)} DSNs queued" if args.dsn else ""))
    return EXIT_OK
