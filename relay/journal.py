"""The journal: every decision about a message, kept in the store for `explain` and replay.

Entries are written with what they record, never on their own round trip when the message is
accepted: a transaction collects its MAIL and RCPT entries in `Transaction.journal`, and they
go to the store with the spool commit (`NewMessage.journal`), or with the refusal that ends them
(a refused RCPT's `recipient.refused` event, a refused MAIL or DATA). Each copy's render notes
go with the outcome of its delivery attempt (`DeliveryJob.render`). The facts that are events
(accepted, delivered, deferred, failed, complained...) are read from the events outbox;
`explain` merges the two.

Kinds and what their `detail` holds (docs/operations.md shows an explained message):
- `mail`: the session (listener, TLS, AUTH user, client address, HELO), the sender, the verdict;
- `rcpt`: one RCPT TO, its place `n` in the transaction, the verdict;
- `data`: the verdict at DATA, the campaign key, size, recipients, and the header block (what the
  data stage's policies read, so `policy replay` can run them again);
- `render`: what the render stage did to one copy, and how its delivery attempt ended.

A verdict is `{"verdict": "accept" | "reject" | "defer", "policy", "rule", "reply", "facts"}`;
`monitored` lists the refusals of policies in monitor mode, in the same shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.policy import Continue, Decision, Defer, Monitored, Reject
from relay.storage.records import JournalEntry

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.policy import Transaction

MAX_HEADER_BYTES = 16 * 1024  # of the header block kept for replay


def verdict(decision: Decision, reply: str | None = None) -> dict[str, Any]:
    """A decision as the journal keeps it (`reply`: what the client was told, when known)."""
    result: dict[str, Any]
    if isinstance(decision.verdict, Continue):
        result = {"verdict": "accept"}
    else:
        result = _refusal(decision.policy, decision.verdict)
    if reply is not None:
        result["reply"] = reply
    if decision.monitored:
        result["monitored"] = [_monitored(item) for item in decision.monitored]
    return result


def _refusal(policy: str | None, refusal: Reject | Defer) -> dict[str, Any]:
    return {
        "verdict": "reject" if isinstance(refusal, Reject) else "defer",
        "policy": policy,
        "rule": refusal.rule,
        "reply": refusal.reply(),
        "facts": dict(refusal.facts),
    }


def _monitored(item: Monitored) -> dict[str, Any]:
    return {**_refusal(item.policy, item.verdict), "mode": "monitor"}


def refused(rule: str, reply: str) -> dict[str, Any]:
    """A refusal of the relay's own (no policy's): the recipient limit, a malformed message."""
    return {"verdict": "reject" if reply.startswith("5") else "defer", "rule": rule, "reply": reply}


def mail_entry(
    tx: Transaction, origin: Mapping[str, object], decision: dict[str, Any], now: float
) -> JournalEntry:
    """MAIL FROM: who submitted the message, how, and the verdict."""
    detail = {"mail_from": tx.mail_from, "client_ip": tx.client_ip, **origin, **decision}
    return JournalEntry(tx.message_id, now, "mail", tx.account.id, detail)


def rcpt_entry(
    tx: Transaction, recipient: str, n: int, decision: dict[str, Any], now: float
) -> JournalEntry:
    """RCPT TO number `n` (from 1) of the transaction and its verdict."""
    return JournalEntry(tx.message_id, now, "rcpt", tx.account.id, {"n": n, **decision}, recipient)


def data_entry(
    tx: Transaction,
    content: bytes,
    campaign: str | None,
    decision: dict[str, Any],
    now: float,
) -> JournalEntry:
    """DATA: the message as the data stage saw it, and the verdict."""
    head = content.split(b"\r\n\r\n", 1)[0][:MAX_HEADER_BYTES]
    detail: dict[str, Any] = {
        "size": len(content),
        "recipients": len(tx.recipients),
        "campaign": campaign,
        "headers": head.decode("utf-8", "replace"),
        **decision,
    }
    if tx.refused:  # recipients refused one by one at DATA (BasePolicy.refuse_recipient)
        detail["refused"] = {r: _refusal(p, v) for r, (p, v) in tx.refused.items()}
    if tx.would_refuse:
        detail["would_refuse"] = {
            r: {**_refusal(p, v), "mode": "monitor"} for r, (p, v) in tx.would_refuse.items()
        }
    return JournalEntry(tx.message_id, now, "data", tx.account.id, detail)


def render_notes(notes: Mapping[str, object], decision: Decision) -> dict[str, Any]:
    """What the render stage did to one copy, and its verdict when it stopped the copy."""
    result = dict(notes)
    if not isinstance(decision.verdict, Continue):
        result["render_verdict"] = verdict(decision)
    elif decision.monitored:
        result["render_monitored"] = [_monitored(item) for item in decision.monitored]
    return result
