"""A customer's submission: MAIL, RCPT and DATA through the policy stages, then the spool.

Each stage runs the policy pipeline's stage; DATA commits the message durably to the spool
and only then answers 250 (never lose an accepted message).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from relay import journal
from relay.delivery.dsn import build_refusal_dsn
from relay.errors import StoreError
from relay.logging import get_logger
from relay.mail import dsnrequest, markers
from relay.mail.campaign import campaign_key, parse
from relay.metrics import MESSAGES_ACCEPTED
from relay.policy import Continue, Submission, Transaction
from relay.smtp.replies import REPLY_NEED_RCPT, REPLY_TEMPFAIL, recipient_rejected, rejected
from relay.storage.events import message_refused_event, refused_event
from relay.storage.records import NewMessage, new_message_id

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from relay.clock import Clock
    from relay.configaccounts import Account
    from relay.runtime import Runtime
    from relay.smtp.session import RelayEnvelope, RelaySession
    from relay.storage.base import Store
    from relay.storage.records import JournalEntry, NewEvent

log = get_logger(__name__)
STORE_TIMEOUT = 30.0
REPLY_TOO_DEEP = "554 5.6.0 The MIME structure is nested too deeply"


class Submissions:
    """The mail transaction of an authenticated account."""

    def __init__(
        self,
        *,
        runtime: Callable[[], Runtime],
        store: Store,
        clock: Clock,
        on_spooled: Callable[[NewMessage], None],
    ) -> None:
        """Judge with the runtime's pipeline, spool into `store`, wake delivery when done."""
        self.runtime = runtime
        self.store = store
        self.clock = clock
        self.on_spooled = on_spooled

    async def mail(
        self,
        envelope: RelayEnvelope,
        account: Account,
        message_id: str,
        client_ip: str,
        address: str,
        *,
        origin: Mapping[str, object],
        dsn: str | None = None,
    ) -> str | None:
        """The mail stage; None when the sender may go on, else the refusal's reply.

        `origin`: how the message came (listener, TLS, AUTH user, HELO), for the journal;
        `dsn`: its RET and ENVID (relay.mail.dsnrequest).
        """
        tx = Transaction(message_id, account, address, client_ip, envelope_dsn=dsn)
        runtime = self.runtime()
        decision = await runtime.pipeline.mail(tx)
        if runtime.config.journal.enabled:
            now = self.clock.now()
            stages = runtime.pipeline.stage_names
            how = {**origin, "policies": {s: stages[s] for s in ("mail", "rcpt", "data")}}
            tx.journal.append(journal.mail_entry(tx, how, journal.verdict(decision), now))
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            rule = decision.verdict.rule
            rejected("mail", reply, rule, mail_from=address)
            refused = message_refused_event(
                account.id,
                message_id,
                mail_from=address,
                rule=rule,
                reply=reply,
                now=self.clock.now(),
            )
            await self._record(tx, [refused])
            return reply
        envelope.tx = tx
        return None

    async def rcpt(self, tx: Transaction, address: str, *, dsn: str | None = None) -> str:
        """The recipient limit, then the rcpt stage; `dsn`: its NOTIFY and ORCPT."""
        runtime = self.runtime()
        tx.rcpt_seen += 1
        journaling = runtime.config.journal.enabled
        if len(tx.recipients) >= runtime.config.smtp.max_recipients:
            reply = "452 4.5.3 Too many recipients"
            recipient_rejected(reply, "max_recipients", address)
            if journaling:
                self._journal_rcpt(tx, address, journal.refused("max_recipients", reply))
            await self._refused(tx, address, "max_recipients", reply)
            return reply
        decision = await runtime.pipeline.rcpt(tx, address)
        if journaling:
            self._journal_rcpt(tx, address, journal.verdict(decision))
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            recipient_rejected(reply, decision.verdict.rule, address)
            await self._refused(tx, address, decision.verdict.rule, reply)
            return reply
        tx.recipients.append(address)
        if dsn is not None:
            tx.dsn[address] = dsn
        return "250 2.1.5 Recipient ok"

    def _journal_rcpt(self, tx: Transaction, address: str, decision: dict[str, object]) -> None:
        tx.journal.append(journal.rcpt_entry(tx, address, tx.rcpt_seen, decision, self.clock.now()))

    async def _refused(self, tx: Transaction, address: str, rule: str, reply: str) -> None:
        """The `recipient.refused` event, so the CRM learns what the reply told its session."""
        event = refused_event(tx.account.id, address, rule=rule, reply=reply, now=self.clock.now())
        await self._record(tx, [event])

    async def _record(self, tx: Transaction, events: list[NewEvent]) -> None:
        """Write `events` and the journal entries the transaction has not written yet.

        The refusal stands without them: a store that cannot take them costs the record (a
        warning), never the answer.
        """
        entries: list[JournalEntry] = tx.journal[:]
        if not events and not entries:
            return
        tx.journal.clear()
        try:
            await asyncio.wait_for(self.store.record_events(events, entries), STORE_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "event_not_recorded",
                account_id=tx.account.id,
                types=[event.type for event in events] or ["journal"],
                error=str(exc),
            )

    async def data(
        self, session: RelaySession, envelope: RelayEnvelope, content: bytes, *, tls: bool
    ) -> str:
        """The data stage, the durable spool commit, then 250."""
        tx = envelope.tx
        if tx is None or not tx.recipients:
            return REPLY_NEED_RCPT
        runtime = self.runtime()
        try:
            headers = parse(content)  # once, for every policy and the campaign key
            campaign = campaign_key(headers)
        except RecursionError:
            # MIME nested deeper than the parser can follow: a property of the message, so a
            # permanent refusal (a 4xx would have the CRM retry it for ever).
            rejected("data", REPLY_TOO_DEEP, "mime_nesting")
            await self._data_refused(
                tx,
                content,
                None,
                journal.refused("mime_nesting", REPLY_TOO_DEEP),
                rule="mime_nesting",
                reply=REPLY_TOO_DEEP,
            )
            return REPLY_TOO_DEEP
        decision = await runtime.pipeline.data(tx, Submission(content, headers, campaign))
        if not isinstance(decision.verdict, Continue):
            reply = decision.verdict.reply()
            rejected("data", reply, decision.verdict.rule)
            await self._data_refused(
                tx,
                content,
                campaign,
                journal.verdict(decision),
                rule=decision.verdict.rule,
                reply=reply,
            )
            return reply
        now = self.clock.now()
        if runtime.config.journal.enabled:
            tx.journal.append(
                journal.data_entry(tx, content, campaign, journal.verdict(decision), now)
            )
        refused = self._refused_at_data(tx, now)
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if session.authenticated else "")
        trace = markers.received_header(
            helo=session.host_name,
            client_ip=session.client_ip,
            hostname=runtime.config.hostname,
            protocol=protocol,
            message_id=tx.message_id,
            now=now,
        )
        message = NewMessage(
            id=tx.message_id,
            account_id=tx.account.id,
            mail_from=tx.mail_from,
            recipients=tuple(tx.recipients),
            content=trace + content,
            received_at=now,
            campaign=campaign,
            journal=tuple(tx.journal),
            events=tuple(refused),
            notices=self._refusal_dsn(tx, content, now),
            envelope_dsn=tx.envelope_dsn,
            recipient_dsn={a: tx.dsn[a] for a in tx.recipients if a in tx.dsn} if tx.dsn else {},
        )
        tx.journal.clear()
        try:
            await asyncio.wait_for(self.store.spool(message), STORE_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            log.error("spool_failed", error=str(exc) or type(exc).__name__)
            rejected("data", REPLY_TEMPFAIL, "spool")
            return REPLY_TEMPFAIL
        for address, (_, verdict) in tx.refused.items():  # logged once on the record
            recipient_rejected(verdict.reply(), verdict.rule, address, "data")
        for dsn in message.notices:
            log.info(
                "dsn_queued",
                message_id=dsn.id,
                original_message_id=tx.message_id,
                recipient=tx.mail_from,
                reason="refused_at_data",
            )
        MESSAGES_ACCEPTED.inc()
        log.info(
            "message_accepted",
            size=len(message.content),
            recipient_count=len(message.recipients),
            mail_from=message.mail_from,
        )
        for spooled in (message, *message.notices):  # delivery keeps their content
            self.on_spooled(spooled)
        return f"250 2.0.0 Ok: queued as {tx.message_id}"

    def _refused_at_data(self, tx: Transaction, now: float) -> list[NewEvent]:
        """The events of the recipients a data policy refused one by one (with the message)."""
        return [
            _data_event(tx, address, verdict.rule, verdict.reply(), now)
            for address, (_, verdict) in tx.refused.items()
        ]

    def _refusal_dsn(self, tx: Transaction, content: bytes, now: float) -> tuple[NewMessage, ...]:
        """The DSN of the recipients refused at DATA; none to a null sender (a DSN's own).

        A recipient whose NOTIFY leaves out FAILURE (NEVER, say) is left out of it
        (RFC 3461); its `recipient.refused` event still says it.
        """
        refused = [
            (address, verdict.reply(), request)
            for address, (_, verdict) in tx.refused.items()
            if (request := dsnrequest.read(tx.dsn.get(address), tx.envelope_dsn)).on_failure
        ]
        if not refused or not tx.mail_from:
            return ()
        body = build_refusal_dsn(
            reporting_host=self.runtime().config.hostname,
            original=content,
            message_id=tx.message_id,
            mail_from=tx.mail_from,
            refused=refused,
            arrival=now,
            now=now,
        )
        dsn = NewMessage(
            id=new_message_id(),
            account_id=tx.account.id,
            mail_from="",
            recipients=(tx.mail_from,),
            content=body,
            received_at=now,
            kind="dsn",
        )
        return (dsn,)

    async def _data_refused(
        self,
        tx: Transaction,
        content: bytes,
        campaign: str | None,
        decision: dict[str, object],
        *,
        rule: str,
        reply: str,
    ) -> None:
        """Record a message refused at DATA: one `recipient.refused` per recipient, the journal.

        Those a policy refused one by one carry their own rule and reply; the rest, the
        message's.
        """
        now = self.clock.now()
        if self.runtime().config.journal.enabled:
            tx.journal.append(journal.data_entry(tx, content, campaign, dict(decision), now))
        refused = [
            *self._refused_at_data(tx, now),
            *(_data_event(tx, address, rule, reply, now) for address in tx.recipients),
        ]
        await self._record(tx, refused)


def _data_event(tx: Transaction, address: str, rule: str, reply: str, now: float) -> NewEvent:
    """`recipient.refused` for one recipient of the transaction, refused at DATA."""
    return refused_event(
        tx.account.id,
        address,
        rule=rule,
        reply=reply,
        now=now,
        stage="data",
        message_id=tx.message_id,
    )
