"""Policy replay: the journaled transactions of a window, judged again by another configuration.

Nothing is sent and the real store is only read. Each transaction runs through the new
configuration's mail, rcpt and data stages at its journaled times (a manual clock), in the order
the relay saw them. What the policies count (rate limits, campaign sizes, unsolicited bulk,
suppression violations), the flags they set and the halts they make go to a scratch store that
starts empty, with each account's standing as it was at the start of the window; what they look
up (suppressions, opt-in records) is read from the real store, a suppression only from the
moment it was made. The outcome of each recipient is compared with the one the journal holds.

What it cannot know: the RCPT commands of transactions a client abandoned before DATA (not
journaled), opt-in records changed since, and operators' suspensions within the window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Any, cast

from relay.clock import ManualClock
from relay.policy import Continue, PolicyServices, Submission, Transaction, build_pipeline
from relay.runtime import make_codec

if TYPE_CHECKING:
    from collections.abc import Mapping

    from relay.config import Config
    from relay.policy import Decision, Pipeline
    from relay.storage.base import Store
    from relay.storage.records import (
        AccountState,
        JournalEntry,
        NewMessage,
        Suppression,
        TermsAcceptance,
    )

Outcome = tuple[str, str | None]  # ("accept" | "reject" | "defer", rule)
PAGE = 5000  # journal entries read at a time


@dataclass(frozen=True)
class Change:
    """One recipient whose outcome differs under the new configuration."""

    message_id: str
    account_id: str
    recipient: str | None  # None: the whole transaction (refused at MAIL, recipients unknown)
    at: float
    before: Outcome
    after: Outcome

    @property
    def kind(self) -> str:
        """`now_refused`, `now_accepted` or `other_rule`."""
        if self.before[0] == "accept":
            return "now_refused"
        if self.after[0] == "accept":
            return "now_accepted"
        return "other_rule"

    @property
    def rule(self) -> str:
        """The rule that makes the difference (the new one, else the one that no longer refuses)."""
        return str(self.after[1] if self.after[0] != "accept" else self.before[1])


@dataclass
class Report:
    """What replaying a window under the new configuration changed."""

    since: float
    until: float
    transactions: int = 0
    recipients: int = 0
    changes: list[Change] = field(default_factory=list)
    halts: list[dict[str, Any]] = field(default_factory=list)  # made by the replay
    halts_before: list[dict[str, Any]] = field(default_factory=list)  # made in the window

    def summary(self) -> list[tuple[str, str, str, int]]:
        """(change, rule, account, recipients), most first."""
        counts = Counter((c.kind, c.rule, c.account_id) for c in self.changes)
        return [(k, r, a, n) for (k, r, a), n in counts.most_common()]

    def as_json(self) -> dict[str, Any]:
        """For tools (`--json`)."""
        return {
            "since": self.since,
            "until": self.until,
            "transactions": self.transactions,
            "recipients": self.recipients,
            "summary": [
                {"change": k, "rule": r, "account": a, "recipients": n}
                for k, r, a, n in self.summary()
            ],
            "changes": [
                {
                    "message_id": c.message_id,
                    "account": c.account_id,
                    "recipient": c.recipient,
                    "at": c.at,
                    "change": c.kind,
                    "before": {"verdict": c.before[0], "rule": c.before[1]},
                    "after": {"verdict": c.after[0], "rule": c.after[1]},
                }
                for c in self.changes
            ],
            "halts": self.halts,
            "halts_before": self.halts_before,
        }


class ReplayStore:
    """The store the replayed policies see: counters and standing in scratch, lookups real."""

    def __init__(self, real: Store, scratch: Store, clock: ManualClock) -> None:
        """Read from `real`, count in `scratch`, as of `clock`."""
        self.real = real
        self.scratch = scratch
        self.clock = clock
        self.halts: list[dict[str, Any]] = []
        self.copies: dict[tuple[str, str, str], list[float]] = {}  # what the replay spooled
        self.start: float | None = None  # the window's start: a new terms version's publication

    def spooled(self, account_id: str, campaign: str, recipients: list[str], at: float) -> None:
        """Count the copies of a message the replay accepted (the spool would have)."""
        for recipient in dict.fromkeys(r.lower() for r in recipients):
            self.copies.setdefault((account_id, campaign, recipient), []).append(at)

    async def repeat_counts(
        self, account_id: str, campaign: str, recipients: list[str], *, since: float
    ) -> dict[str, int]:
        """Copies the replay accepted, as the spool's repeat counts."""
        return {
            r: sum(at > since for at in self.copies.get((account_id, campaign, r.lower()), []))
            for r in recipients
        }

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the Store method is
        """Counters, flags and standing go to the scratch store; nothing else may write."""
        if name in (
            "window_take",
            "window_take_all",
            "record_campaign",
            "set_flag",
            "has_flag",
            "account_state",
        ):
            return getattr(self.scratch, name)
        if name in ("consent", "consents"):
            return getattr(self.real, name)
        raise AttributeError(f"policy replay does not offer the store's {name}")

    async def suppressed(self, address: str, account_id: str) -> Suppression | None:
        """The suppression the relay would have found at the replayed time."""
        found = await self.real.suppressed(address, account_id)
        if found is None or found.created_at > self.clock.now():
            return None
        return found

    async def terms_accepted(self, account_id: str) -> list[TermsAcceptance]:
        """The acceptances the account had made at the replayed time."""
        accepted = await self.real.terms_accepted(account_id)
        return [a for a in accepted if a.accepted_at <= self.clock.now()]

    async def terms_published(self, version: str, *, now: float) -> float:
        """When the version took effect, without recording it (`terms.published` wins)."""
        del version
        return self.start if self.start is not None else now

    async def spool(self, message: NewMessage) -> None:
        """Mail the policies would send (a terms reminder) is not sent by a replay."""
        del message

    async def set_account_state(
        self, account_id: str, state: str, *, reason: str, actor: str, now: float
    ) -> int:
        """A halt of the replay: kept in scratch and reported."""
        self.halts.append({"account": account_id, "state": state, "reason": reason, "at": now})
        return await self.scratch.set_account_state(
            account_id,
            state,  # type: ignore[arg-type]
            reason=reason,
            actor=actor,
            now=now,
        )


def _outcome(decision: Decision) -> Outcome:
    verdict = decision.verdict
    if isinstance(verdict, Continue):
        return ("accept", None)
    return ("reject" if verdict.code >= 500 else "defer", verdict.rule)  # noqa: PLR2004


def _at_data(message: Outcome, one_by_one: Mapping[str, Any] | None) -> Outcome:
    """A recipient's outcome at DATA: the message's, or its own refusal of an accepted one."""
    if message[0] == "accept" and one_by_one is not None:
        return _journaled(one_by_one)
    return message


def _journaled(detail: Mapping[str, Any]) -> Outcome:
    return (str(detail["verdict"]), detail.get("rule"))


async def _transactions(
    store: Store, since: float, until: float
) -> list[tuple[str, list[JournalEntry]]]:
    """The journaled transactions of the window, in the order their first entry was written."""
    grouped: dict[str, list[JournalEntry]] = {}
    after = 0
    while True:
        page = await store.journal_window(since=since, until=until, after_id=after, limit=PAGE)
        for entry in page:
            grouped.setdefault(entry.message_id, []).append(entry)
        if len(page) < PAGE:
            return list(grouped.items())
        after = page[-1].id


class Replayer:
    """Runs journaled transactions through a pipeline built on the replay store."""

    def __init__(self, config: Config, store: ReplayStore, clock: ManualClock) -> None:
        """Judge with `config`'s policies."""
        self.config = config
        self.clock = clock
        self.store = store
        services = PolicyServices(
            config=config, store=cast("Store", store), clock=clock, tokens=make_codec(config, clock)
        )
        self.pipeline: Pipeline = build_pipeline(services)

    async def run(self, message_id: str, entries: list[JournalEntry], report: Report) -> None:
        """Replay one transaction; add its differences to `report`."""
        mail = next((e for e in entries if e.kind == "mail"), None)
        if mail is None or mail.account_id is None:
            return  # its MAIL entry is older than the window
        rcpts = sorted((e for e in entries if e.kind == "rcpt"), key=lambda e: e.detail["n"])
        data = next((e for e in entries if e.kind == "data"), None)
        report.transactions += 1
        report.recipients += len(rcpts)
        tx, after_mail = await self._mail(message_id, mail)
        if not rcpts:  # refused at MAIL (or nothing followed): compare the transaction
            before_mail = _journaled(mail.detail)
            if before_mail != after_mail:
                report.changes.append(
                    Change(message_id, mail.account_id, None, mail.at, before_mail, after_mail)
                )
            return
        before = {e.detail["n"]: _journaled(e.detail) for e in rcpts}
        after = dict.fromkeys(before, after_mail)
        accepted = await self._rcpts(tx, rcpts, after) if tx is not None else []
        if data is None:  # abandoned before DATA: its accepted recipients were never sent
            before = {n: o for n, o in before.items() if o[0] != "accept"}
        else:
            before_data = _journaled(data.detail)
            one_by_one = data.detail.get("refused") or {}
            recipient = {e.detail["n"]: str(e.recipient) for e in rcpts}
            before = {
                n: _at_data(before_data, one_by_one.get(recipient[n])) if o[0] == "accept" else o
                for n, o in before.items()
            }
            if accepted and tx is not None:
                after_data = await self._data(tx, data)
                for n in accepted:
                    refusal = tx.refused.get(recipient[n])
                    after[n] = _at_data(
                        after_data,
                        None if refusal is None else {"verdict": "reject", "rule": refusal[1].rule},
                    )
        report.changes += [
            Change(message_id, mail.account_id, e.recipient, e.at, before[n], after[n])
            for e in rcpts
            if (n := e.detail["n"]) in before and before[n] != after[n]
        ]

    async def _mail(
        self, message_id: str, mail: JournalEntry
    ) -> tuple[Transaction | None, Outcome]:
        account = self.config.account(str(mail.account_id))
        if account is None:
            return None, ("reject", "account.unknown")
        detail = mail.detail
        tx = Transaction(message_id, account, str(detail["mail_from"]), str(detail["client_ip"]))
        self.clock.set(mail.at)
        outcome = _outcome(await self.pipeline.mail(tx))
        return (tx if outcome[0] == "accept" else None), outcome

    async def _rcpts(
        self, tx: Transaction, rcpts: list[JournalEntry], after: dict[int, Outcome]
    ) -> list[int]:
        """Each RCPT again, its outcome into `after`; the numbers of those accepted."""
        accepted = []
        for entry in rcpts:
            n = entry.detail["n"]
            if len(tx.recipients) >= self.config.smtp.max_recipients:
                after[n] = ("defer", "max_recipients")
                continue
            self.clock.set(entry.at)
            after[n] = _outcome(await self.pipeline.rcpt(tx, str(entry.recipient)))
            if after[n][0] == "accept":
                tx.recipients.append(str(entry.recipient))
                accepted.append(n)
        return accepted

    async def _data(self, tx: Transaction, data: JournalEntry) -> Outcome:
        head = str(data.detail.get("headers", "")).encode("utf-8", "replace") + b"\r\n\r\n"
        headers = BytesHeaderParser(policy=compat32).parsebytes(head)
        campaign = str(data.detail.get("campaign") or "")
        self.clock.set(data.at)
        outcome = _outcome(await self.pipeline.data(tx, Submission(head, headers, campaign)))
        if outcome[0] == "accept" and tx.recipients:
            self.store.spooled(tx.account.id, campaign, tx.recipients, data.at)
        return outcome


async def replay(
    store: Store, scratch: Store, config: Config, *, since: float, until: float
) -> Report:
    """Replay [since, until) of `store`'s journal under `config`; `scratch`: an empty store."""
    clock = ManualClock(since)
    replay_store = ReplayStore(store, scratch, clock)
    replay_store.start = since
    report = Report(since, until)
    histories: dict[str, list[AccountState]] = {}
    for change in await store.account_changes(since=0.0):  # every account's, in one query
        histories.setdefault(change.account_id, []).append(change)
    for account in config.accounts:
        history = histories.get(account.id, [])
        standing = [h for h in history if h.at < since]
        if standing and standing[-1].state != "active":
            state = standing[-1]
            await scratch.set_account_state(
                account.id, state.state, reason=state.reason, actor=state.actor, now=state.at
            )
        report.halts_before += [
            {"account": h.account_id, "state": h.state, "reason": h.reason, "at": h.at}
            for h in history
            if since <= h.at < until and h.actor.startswith("policy:")
        ]
    replayer = Replayer(config, replay_store, clock)
    for message_id, entries in await _transactions(store, since, until):
        await replayer.run(message_id, entries, report)
    report.halts = replay_store.halts
    report.changes.sort(key=lambda c: c.at)
    return report
