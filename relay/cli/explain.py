"""`explain ID | --recipient ADDRESS --since TIME`: every decision about a message, in order.

ID is a queue id, an `X-Optin-Trace` token, a `bounce+TOKEN@` or `unsub+TOKEN@` address (or its
token), or an unsubscribe link or its token. The story comes from the store, not from logs: the
journal (relay.journal: the session, each policy's verdict at MAIL, each RCPT and DATA, each
copy's rendering), the events outbox (accepted, each delivery attempt, DSNs, unsubscribes,
complaints, bounces, cases) and the audit trail of queue changes.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, on_store, when

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store
    from relay.storage.records import Event, JournalEntry

_LONG_AGO = 100 * 365 * 86400.0  # explain reads old tokens too: their age is not the question
_KIND_ORDER = {"mail": 0, "rcpt": 1, "data": 2, "render": 4}
_Key = tuple[float, int, str, int, int]  # time, stage, recipient, journal before event, order
_STAGES = ("mail", "rcpt", "data")
_MAX_MESSAGES = 20  # messages explained for one recipient


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `explain`."""
    explain = commands.add_parser(
        "explain", parents=[common], help="every decision about a message, in order"
    )
    explain.add_argument("id", nargs="?", metavar="ID", help="queue id, trace or bounce token...")
    explain.add_argument("--recipient", help="the messages to this address (with --since)")
    explain.add_argument("--since", help="with --recipient: 24h, 7d, or an ISO 8601 time")
    explain.add_argument("--json", action="store_true", help="for tools")
    explain.set_defaults(handler=on_store(_explain))


def parse_since(text: str, now: float) -> float:
    """`24h`, `7d` (back from now) or an ISO 8601 time, as epoch seconds."""
    from relay.configtypes import parse_duration  # noqa: PLC0415

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text}: give a time zone (Z or +00:00)")
    return moment.timestamp()


def _token(text: str) -> tuple[str, str]:
    """The token in an address, a link or a header value, and its prefix (`bounce+`...)."""
    token = text.strip()
    if "/u/" in token:
        token = token.rsplit("/u/", 1)[1].split("?", 1)[0]
    token = token.strip("<>").split("@", 1)[0]
    for prefix in ("bounce+", "unsub+"):
        if token.lower().startswith(prefix):
            return prefix, token[len(prefix) :]
    return "", token


async def resolve(ident: str, config: Config, store: Store) -> list[str]:
    """The queue ids `ident` names (none when it names nothing this relay knows)."""
    if re.fullmatch(r"[0-9A-F]{21}", ident) and (
        await store.journal(ident) or await store.queued_message(ident)
    ):
        return [ident]
    from relay.clock import SystemClock  # noqa: PLC0415
    from relay.tokens import TokenCodec, token_id  # noqa: PLC0415

    if config.tokens is None:
        return []
    keys = [key.get_secret_value().encode() for key in config.tokens.keys]
    codec = TokenCodec(keys, SystemClock(), max_age=_LONG_AGO)
    prefix, token = _token(ident)
    recipient_id = (
        codec.verify_unsubscribe_address(token) if prefix == "unsub+" else codec.verify_trace(token)
    )
    if recipient_id is None and not prefix:
        recipient_id = codec.verify_unsubscribe_address(token)
    if recipient_id is not None:
        sent = await store.sent(recipient_id)
        return [] if sent is None else [sent.message_id]
    claim = codec.verify(token)
    if claim is None:
        return []
    wanted = token_id(token)
    found = []
    candidates = await store.journal_messages(claim.recipient, since=claim.issued, limit=1000)
    for message_id in candidates:
        for entry in await store.journal(message_id):
            notes = entry.detail.get("unsubscribe")
            if isinstance(notes, dict) and notes.get("token_id") == wanted:
                found.append(message_id)
                break
    return found


async def story(message_id: str, store: Store) -> dict[str, Any]:
    """Everything the store knows about `message_id`, as one timeline."""
    entries = await store.journal(message_id)
    message = await store.queued_message(message_id)
    recipients = {e.recipient for e in entries if e.recipient}
    if message is not None:
        recipients |= {r.recipient for r in message.recipients}
    addresses = sorted(recipients | {address.lower() for address in recipients})
    events = await store.message_events(message_id, addresses)
    actions = await store.queue_actions(message_id) if message is not None else []
    timeline = [*_journaled(entries), *_events(events)]
    for n, action in enumerate(actions):
        item = {
            "at": action.at,
            "source": "queue",
            "kind": action.action,
            "actor": action.actor,
            "reason": action.reason,
            "scope": action.message_id or action.account_id or "all",
        }
        timeline.append(((action.at, 6, "", 1, n), item))
    head: dict[str, Any] = {"queue_id": message_id}
    if message is not None:
        head |= {
            "account_id": message.account_id,
            "mail_from": message.mail_from,
            "received_at": message.received_at,
            "held": message.held_at is not None,
            "recipients": {r.recipient: r.status for r in message.recipients},
        }
    elif entries:
        first = entries[0]
        head |= {"account_id": first.account_id, "mail_from": first.detail.get("mail_from")}
    return {"message": head, "timeline": [item for _, item in sorted(timeline, key=_first)]}


# A copy's render entry and its delivery event share a time: each copy's pair stays together.
def _journaled(entries: list[JournalEntry]) -> list[tuple[_Key, dict[str, Any]]]:
    timeline = []
    for entry in entries:
        item = {"at": entry.at, "source": "journal", "kind": entry.kind, **entry.detail}
        if entry.recipient:
            item["recipient"] = entry.recipient
        rank = _KIND_ORDER[entry.kind]
        group = (entry.recipient or "") if rank == _KIND_ORDER["render"] else ""
        timeline.append(((entry.at, rank, group, 0, entry.id), item))
    return timeline


def _events(events: list[Event]) -> list[tuple[_Key, dict[str, Any]]]:
    timeline = []
    for n, event in enumerate(events):
        item = {"at": event.at, "source": "event", "kind": event.type, **event.data}
        if event.recipient:
            item["recipient"] = event.recipient
        key: _Key
        if event.type == "message.accepted":
            key = (event.at, 3, "", 1, n)
        elif event.type.startswith("message."):
            key = (event.at, _KIND_ORDER["render"], event.recipient or "", 1, n)
        else:
            key = (event.at, 5, "", 1, n)
        timeline.append((key, item))
    return timeline


def _first(pair: tuple[_Key, dict[str, Any]]) -> _Key:
    return pair[0]


def _verdict(item: dict[str, Any]) -> str:
    name = {"accept": "accepted", "reject": "refused", "defer": "deferred"}[item["verdict"]]
    text = name if item["verdict"] == "accept" else f"{name} by {item.get('rule')}"
    if item.get("facts"):
        text += " (" + ", ".join(f"{k}={v}" for k, v in item["facts"].items()) + ")"
    if item["verdict"] != "accept":
        text += f": {item.get('reply')}"
    for monitored in item.get("monitored", []):
        text += f"\n{'':31}monitor mode: would be refused by {monitored['rule']}"
        if monitored.get("facts"):
            text += " (" + ", ".join(f"{k}={v}" for k, v in monitored["facts"].items()) + ")"
    return text


def _mail(item: dict[str, Any]) -> str:
    how = "TLS" if item.get("tls") else "no TLS"
    line = (
        f"MAIL FROM <{item.get('mail_from')}> from {item.get('client_ip')}"
        f" (HELO {item.get('helo')}) on {item.get('listener')}, {how},"
        f" AUTH {item.get('auth')}: {_verdict(item)}"
    )
    stages = item.get("policies")
    if isinstance(stages, dict):  # each continued unless a line below names it refusing
        asked = "; ".join(
            f"{stage}: {', '.join(stages[stage]) or '-'}" for stage in _STAGES if stage in stages
        )
        line += f"\n{'':27}policies asked in order ({asked})"
    return line


_WHY_OWN_PART = {
    "sealed": "the message is signed or encrypted",
    "malformed": "its MIME is malformed and would not read back the same",
    "no_text": "it has no text part",
}


def _footer(note: dict[str, Any]) -> str:
    """Where the unsubscribe footer went, and why there (journal entries of any release)."""
    if note.get("footer") == "in_parts":
        count = note.get("parts", 0)
        return f"footer in {count} text part{'s' if count != 1 else ''}"
    if note.get("footer") == "own_part":
        why = _WHY_OWN_PART.get(str(note.get("why")), str(note.get("why")))
        return f"footer in a text/plain part of its own ({why})"
    return f"footer {note.get('footer')}"


def _copy(item: dict[str, Any], rcpt: str) -> str:
    parts = [f"attempt {item.get('attempt')} ({item.get('status')})"]
    if isinstance(unsub := item.get("unsubscribe"), dict):
        parts.append(f"unsubscribe token {unsub['token_id']}, {_footer(unsub)}")
    if isinstance(trace := item.get("trace"), dict):
        parts.append(f"trace token {trace['token_id']}, envelope <{trace['mail_from']}>")
    if isinstance(dkim := item.get("dkim"), dict):
        signed = f"signed d={dkim['signed']}" if dkim["signed"] else "not signed"
        parts.append(f"DKIM {signed}, {dkim['removed']} broken signatures removed")
    if isinstance(stopped := item.get("render_verdict"), dict):
        parts.append(_verdict(stopped))
    if item.get("dsn"):
        parts.append(f"DSN to the sender queued as {item['dsn']}")
    return f"copy for {rcpt}" + "; ".join(parts)


def describe(item: dict[str, Any]) -> str:
    """One line (or a few) of the human-readable timeline."""
    kind, source = item["kind"], item["source"]
    rcpt = f"<{item['recipient']}> " if item.get("recipient") else ""
    if source == "journal":
        if kind == "mail":
            return _mail(item)
        if kind == "rcpt":
            return f"RCPT TO #{item.get('n')} {rcpt}{_verdict(item)}"
        if kind == "data":
            line = (
                f"DATA {item.get('size')} bytes, {item.get('recipients')} recipients,"
                f" campaign {item.get('campaign')}: {_verdict(item)}"
            )
            for key, label in (
                ("refused", "refused"),
                ("would_refuse", "monitor mode: would refuse"),
            ):
                for address, refusal in (item.get(key) or {}).items():
                    why = f"by {refusal.get('rule')}: {refusal.get('reply')}"
                    line += f"\n{'':27}{label} <{address}> {why}"
            return line
        return _copy(item, rcpt)
    if source == "queue":
        reason = f" ({item['reason']})" if item.get("reason") else ""
        return f"queue {kind} of {item['scope']} by {item['actor']}{reason}"
    rest = {k: v for k, v in item.items() if k not in ("at", "source", "kind", "recipient")}
    details = ", ".join(f"{k}={v}" for k, v in rest.items() if v not in (None, "", []))
    return f"{kind} {rcpt}{details}".rstrip()


def render(found: dict[str, Any]) -> str:
    """The human-readable form of `story`'s result."""
    head = found["message"]
    lines = [f"message {head['queue_id']}"]
    if head.get("account_id"):
        lines[0] += f"  account {head['account_id']}  sender <{head.get('mail_from')}>"
    if "recipients" in head:
        states = ", ".join(f"<{r}> {s}" for r, s in head["recipients"].items())
        lines.append(f"now: {states}" + ("  (held)" if head.get("held") else ""))
    if not found["timeline"]:
        lines.append("(nothing journaled: older than the retention, or the journal is off)")
    lines += [f"{when(item['at'])}  {describe(item)}" for item in found["timeline"]]
    return "\n".join(lines)


async def _explain(args: argparse.Namespace, config: Config, store: Store) -> int:
    if (args.id is None) == (args.recipient is None):
        print("error: name an ID, or --recipient ADDRESS --since TIME", file=sys.stderr)
        return EXIT_USAGE
    if args.recipient is not None:
        try:
            since = parse_since(args.since or "24h", time.time())
        except ValueError as exc:
            print(f"error: --since: {exc}", file=sys.stderr)
            return EXIT_USAGE
        ids = await store.journal_messages(args.recipient, since=since, limit=_MAX_MESSAGES)
        if args.recipient.lower() != args.recipient:
            more = await store.journal_messages(
                args.recipient.lower(), since=since, limit=_MAX_MESSAGES
            )
            ids += [mid for mid in more if mid not in ids]
    else:
        ids = await resolve(args.id, config, store)
    if not ids:
        print(f"error: nothing known about {args.id or args.recipient}", file=sys.stderr)
        return EXIT_REFUSED
    stories = [await story(message_id, store) for message_id in ids]
    if args.json:
        print(json.dumps(stories if len(stories) > 1 else stories[0], indent=2, default=str))
    else:
        print("\n\n".join(render(found) for found in stories))
    return EXIT_OK
