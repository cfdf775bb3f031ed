"""The policy seam: stages, verdicts, the transaction, and the pipeline that runs policies.

A policy is one module `policies/<name>.py` holding a pydantic `Settings` model and a `Policy`
class (a subclass of `BasePolicy`) built as `Policy(settings, services)`. The config section
`policies.<name>` turns it on (required policies run anyway) and sets it; the policy declares
its own place (`relay.policyfiles` orders them). At each stage the pipeline asks every policy in
order; the first answer that is not `Continue` ends the stage. A policy that raises or times out
defers the mail (fail closed), never lets it through. docs/policies.md is the guide.

Stages: `mail` (MAIL FROM), `rcpt` (each RCPT TO), `data` (the whole message, before the spool
commit), `render` (each recipient's copy at delivery; a policy may rewrite `Rendering.content`).

Monitor mode: a policy whose settings derive from `RuleSettings` takes `mode: monitor`; its
refusals then let the mail through, logged (`policy_would_refuse`), counted and journaled as
`Decision.monitored`, and its account halts are logged (`account_would_halt`), not done.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay.accounts.abuse import halt
from relay.errors import ConfigError
from relay.logging import get_logger
from relay.metrics import POLICY_WOULD_REFUSE
from relay.policyfiles import running_policies

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from email.message import Message

    from relay.clock import Clock
    from relay.config import Config
    from relay.configaccounts import Account
    from relay.mail.signing import Signer
    from relay.storage.base import Store
    from relay.storage.records import JournalEntry, MessageKind
    from relay.tokens import TokenCodec

log = get_logger(__name__)


@dataclass(frozen=True)
class Continue:
    """The policy has no objection; the next policy decides."""


@dataclass(frozen=True)
class Reject:
    """Refuse permanently (5xx); `facts`: the numbers the rule compared, for the journal."""

    text: str
    rule: str
    code: int = 550
    status: str = "5.7.1"
    facts: Mapping[str, object] = field(default_factory=dict)

    def reply(self) -> str:
        """The SMTP reply line."""
        return f"{self.code} {self.status} {self.text}"


@dataclass(frozen=True)
class Defer:
    """Refuse for now (4xx); a retry may succeed. `facts` as for Reject."""

    text: str
    rule: str
    code: int = 451
    status: str = "4.7.0"
    facts: Mapping[str, object] = field(default_factory=dict)

    def reply(self) -> str:
        """The SMTP reply line."""
        return f"{self.code} {self.status} {self.text}"


Verdict = Continue | Reject | Defer
CONTINUE = Continue()


@dataclass
class Transaction:
    """One message as the ingress sees it, from MAIL FROM to the end of DATA."""

    message_id: str
    account: Account
    mail_from: str
    client_ip: str
    recipients: list[str] = field(default_factory=list)
    # The DSN parameters (relay.mail.dsnrequest): the message's RET and ENVID, and each
    # recipient's NOTIFY and ORCPT (by address; only those that gave any).
    envelope_dsn: str | None = None
    dsn: dict[str, str] = field(default_factory=dict)
    # What one policy tells a later one, as typed fields (a policy names the one it reads in
    # its `after`): the broadcast policy's count of this campaign's recipients in its window.
    campaign_recipients: int = 0
    # The journal (relay.journal): entries not yet written, and RCPT commands seen so far.
    journal: list[JournalEntry] = field(default_factory=list)
    rcpt_seen: int = 0
    # Recipients a data-stage policy refused one by one (BasePolicy.refuse_recipient), taken
    # out of `recipients`: (policy, verdict) each; and those a policy in monitor mode would have.
    refused: dict[str, tuple[str, Reject]] = field(default_factory=dict)
    would_refuse: dict[str, tuple[str, Reject]] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """The message content at the data stage: raw bytes and its parsed header block."""

    content: bytes
    headers: Message
    campaign: str


@dataclass
class Rendering:
    """One recipient's copy at delivery; render policies may replace `content`."""

    message_id: str
    account: Account | None
    mail_from: str
    recipient: str
    content: bytes
    kind: MessageKind = "message"
    campaign: str | None = None
    original: bytes = b""  # the spooled content, before any render policy
    seven_bit: bool = False  # the upstream takes no 8-bit content: convert before signing
    recipient_id: int = 0  # the spooled recipient (what bounce and trace tokens name)
    # What the render policies did to the copy (token ids, footer, signatures), for the journal.
    notes: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyServices:
    """What a policy may use: the config, the store and the clock."""

    config: Config
    store: Store
    clock: Clock
    tokens: TokenCodec
    signer: Signer | None = None


class RuleSettings(BaseModel):
    """Settings of a policy that can refuse: `mode` lets operators try a rule before enforcing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["enforce", "monitor"] = Field(
        default="enforce",
        description="monitor: refusals and halts are logged, counted and journaled, not done",
    )


class BasePolicy:
    """A policy; every stage continues unless the subclass overrides it.

    Where it runs is declared here, not in the core: `after` and `before` name the policies it
    must follow or precede (`"*"`: every policy that does not itself say `"*"` on that side), and
    `required` makes it run whether or not the config names it. Among policies the declarations
    leave unordered, the config's order decides.
    """

    name: ClassVar[str]
    required: ClassVar[bool] = False
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    mode: Literal["enforce", "monitor"] = "enforce"  # from RuleSettings, set by build_pipeline

    def refuse_recipient(
        self, tx: Transaction, recipient: str, verdict: Reject, *, stage: str = "data"
    ) -> None:
        """Refuse one recipient at the data stage, where SMTP has one reply for all of them.

        The others are spooled; the CRM learns of this one from its `recipient.refused` event
        (and a refusal of every recipient is the message's reply). In monitor mode: logged,
        counted and journaled only.
        """
        if self.mode == "monitor":
            _would_refuse(stage, self.name, verdict)
            tx.would_refuse[recipient] = (self.name, verdict)
            return
        tx.refused[recipient] = (self.name, verdict)
        tx.recipients = [r for r in tx.recipients if r != recipient]

    async def halt(
        self,
        store: Store,
        account_id: str,
        rule: str,
        *,
        count: float,
        threshold: float,
        now: float,
    ) -> None:
        """Suspend the account for `rule` (relay.accounts.abuse); in monitor mode, only log it."""
        if self.mode == "monitor":
            log.warning(
                "account_would_halt",
                account_id=account_id,
                policy=self.name,
                rule=rule,
                count=count,
                threshold=threshold,
            )
            return
        await halt(store, account_id, rule, count=count, threshold=threshold, now=now)

    async def on_mail(self, tx: Transaction) -> Verdict:
        """Judge the envelope sender."""
        del tx
        return CONTINUE

    async def on_rcpt(self, tx: Transaction, recipient: str) -> Verdict:
        """Judge one recipient."""
        del tx, recipient
        return CONTINUE

    async def on_data(self, tx: Transaction, submission: Submission) -> Verdict:
        """Judge the whole message before it is spooled."""
        del tx, submission
        return CONTINUE

    async def on_render(self, rendering: Rendering) -> Verdict:
        """Shape (or stop) one recipient's copy at delivery."""
        del rendering
        return CONTINUE


class StorePolicy(BasePolicy):
    """A policy that needs only the store and the clock (its numbers are per account)."""

    def __init__(self, settings: RuleSettings, services: PolicyServices) -> None:
        """Count and look up in the store, by the services' clock."""
        del settings
        self.store = services.store
        self.clock = services.clock


@dataclass(frozen=True)
class Monitored:
    """A refusal a policy in monitor mode would have given."""

    policy: str
    verdict: Reject | Defer


@dataclass(frozen=True)
class Decision:
    """A stage's outcome and the policy that gave it (None when every policy continued).

    `monitored`: the refusals of policies in monitor mode met on the way.
    """

    verdict: Verdict
    policy: str | None
    monitored: tuple[Monitored, ...] = ()


_DEADLINE_SLACK = 1.25  # a policy call's deadline moves at most once per quarter timeout
_HOOKS = {"mail": "on_mail", "rcpt": "on_rcpt", "data": "on_data", "render": "on_render"}


class Pipeline:
    """Policies in order, each call bounded by `timeout` seconds.

    A stage calls only the policies that implement it (the others would only say continue), and
    bounds each call with one deadline per stage: no task, and no timer object, per policy call.
    Before each call the deadline moves, when less than `timeout` is left, to 1.25 `timeout`
    ahead; so every call has at least `timeout` and at most 1.25 `timeout`, and a stage of quick
    policies moves the timer once rather than once per policy.
    """

    def __init__(self, policies: list[BasePolicy], *, timeout: float = 10.0) -> None:
        """Run `policies` in the given order."""
        self.policies = policies
        self.timeout = timeout
        self._stages = {
            stage: [p for p in policies if getattr(type(p), hook) is not getattr(BasePolicy, hook)]
            for stage, hook in _HOOKS.items()
        }

    @property
    def names(self) -> list[str]:
        """The policies' names in order."""
        return [policy.name for policy in self.policies]

    @functools.cached_property
    def stage_names(self) -> dict[str, list[str]]:
        """The policies each stage asks, in order (journaled: each continued but a refuser)."""
        return {stage: [p.name for p in policies] for stage, policies in self._stages.items()}

    async def mail(self, tx: Transaction) -> Decision:
        """Run the mail stage."""
        return await self._run("mail", lambda p: p.on_mail(tx))

    async def rcpt(self, tx: Transaction, recipient: str) -> Decision:
        """Run the rcpt stage for `recipient`."""
        return await self._run("rcpt", lambda p: p.on_rcpt(tx, recipient))

    async def data(self, tx: Transaction, submission: Submission) -> Decision:
        """Run the data stage."""
        return await self._run("data", lambda p: p.on_data(tx, submission))

    async def render(self, rendering: Rendering) -> Decision:
        """Run the render stage for one recipient's copy."""
        return await self._run("render", lambda p: p.on_render(rendering))

    async def _run(self, stage: str, call: Callable[[BasePolicy], Awaitable[Verdict]]) -> Decision:
        policies = self._stages[stage]
        if not policies:
            return Decision(CONTINUE, None)
        loop = asyncio.get_running_loop()
        current = policies[0]
        monitored: tuple[Monitored, ...] = ()
        try:
            async with asyncio.timeout(None) as deadline:
                for current in policies:
                    now, when = loop.time(), deadline.when()
                    if when is None or when - now < self.timeout:
                        deadline.reschedule(now + self.timeout * _DEADLINE_SLACK)
                    verdict = await call(current)
                    if isinstance(verdict, Continue):
                        continue
                    if current.mode == "monitor":
                        monitored += (_would_refuse(stage, current.name, verdict),)
                        continue
                    return Decision(verdict, current.name, monitored)
        except Exception as exc:  # noqa: BLE001 - any failure of a policy must fail closed
            log.error(
                "policy_error",
                stage=stage,
                policy=current.name,
                error=type(exc).__name__,
                detail=str(exc),
            )
            return Decision(
                Defer("Temporary policy failure, try again later", current.name, 451, "4.3.0"),
                current.name,
                monitored,
            )
        return Decision(CONTINUE, None, monitored)


def _would_refuse(stage: str, policy: str, verdict: Reject | Defer) -> Monitored:
    """Log and count what a policy in monitor mode would have refused."""
    POLICY_WOULD_REFUSE.labels(verdict.rule).inc()
    log.info(
        "policy_would_refuse",
        stage=stage,
        policy=policy,
        rule=verdict.rule,
        reply=verdict.reply(),
        **{f"fact_{key}": value for key, value in verdict.facts.items()},
    )
    return Monitored(policy, verdict)


def build_pipeline(services: PolicyServices) -> Pipeline:
    """Instantiate the required policies and the configured ones, in their declared order.

    Raises ConfigError when their declarations cannot be ordered (`check-config` exits 78, a
    reload keeps the running configuration).
    """
    config = services.config
    try:
        modules = running_policies(list(config.policies))
    except (LookupError, ValueError) as exc:  # declarations that contradict each other
        raise ConfigError([f"policies: {exc}"]) from exc
    policies: list[BasePolicy] = []
    for module in modules:
        name = module.Policy.name
        settings: BaseModel = config.policies.get(name) or module.Settings()
        policy: BasePolicy = module.Policy(settings, services)
        if isinstance(settings, RuleSettings):
            policy.mode = settings.mode
        policies.append(policy)
    return Pipeline(policies, timeout=config.policy_timeout)
