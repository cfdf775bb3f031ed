"""Delivery: workers lease due recipients from the spool, render each copy and hand it upstream.

At-least-once: a recipient stays pending until the upstream's answer is recorded. Claims are
leases of `delivery.lease` seconds, renewed while the delivery is in flight; a process that dies
stops renewing, and its recipients are taken again once the lease runs out. Each recipient has
its own state, so one recipient's failure never fails another. A permanent failure, or expiry after
`delivery.max_age`, spools a DSN to the envelope sender in the same transaction (never for a
message whose envelope sender is null).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING

from relay import journal
from relay.delivery.dsn import build_dsn, build_relayed_dsn
from relay.delivery.upstream import SendResult
from relay.errors import StoreError
from relay.logging import get_logger
from relay.mail import dsnrequest
from relay.metrics import DELIVERIES
from relay.policy import Continue, Defer, Rendering
from relay.storage.records import DeliveryJob, NewMessage, new_message_id

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from relay.clock import Clock
    from relay.config import Config, DeliveryConfig
    from relay.delivery.upstream import Outcome, Upstream
    from relay.runtime import Runtime
    from relay.storage.base import Store

log = get_logger(__name__)

CONTENT_CACHE_BYTES = 64 * 1024 * 1024
CRASH_LIMIT = 3  # attempts that raised before a recipient fails for good


def _lease_lost(fields: Mapping[str, object]) -> None:
    # The lease ran out before the outcome was recorded (a stalled node, a clock jump): another
    # worker owns the recipient now, so this outcome is dropped and the copy may go out twice.
    log.warning("delivery_lease_lost", **fields)


def retry_delay(config: DeliveryConfig, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based), with jitter."""
    schedule = config.retry_schedule
    base = schedule[min(attempts, len(schedule)) - 1]
    return base * (1 + rng.uniform(-config.jitter, config.jitter))


class DeliveryService:
    """Runs the delivery loop until stopped; `wake()` makes it look at the spool at once."""

    def __init__(
        self,
        *,
        store: Store,
        upstream: Upstream,
        clock: Clock,
        runtime: Callable[[], Runtime],
        worker_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`runtime()` returns the config and pipeline in force (they change on reload)."""
        self.store = store
        self.upstream = upstream
        self.clock = clock
        self.runtime = runtime
        self.worker_id = worker_id or secrets.token_hex(6)
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._wake = asyncio.Event()
        self._stopping = False
        self._claims = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._leases: dict[str, int] = {}  # lease -> deliveries in flight under it
        self._content: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0  # bytes in self._content
        self._running = False

    def wake(self) -> None:
        """Look for due work now rather than at the next poll."""
        self._wake.set()

    def spooled(self, message: NewMessage) -> None:
        """A message this process has just committed: keep its content for delivery, and wake.

        Its recipients are usually claimed here a moment later; the store is not asked for the
        content again.
        """
        if self._running:
            self._remember(message.id, message.content)
        self.wake()

    async def run(self) -> None:
        """Claim and deliver until `stop()`; renew the leases of deliveries in flight."""
        renewer = asyncio.create_task(self._renew_leases())
        self._running = True
        try:
            await self._claim_loop()
        finally:
            self._running = False
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _renew_leases(self) -> None:
        while True:
            lease_time = self.runtime().config.delivery.lease
            await asyncio.sleep(lease_time / 3)
            for lease in list(self._leases):
                try:
                    await self.store.renew(lease, lease_until=self.clock.now() + lease_time)
                except StoreError as exc:
                    log.error("delivery_store_error", error=str(exc))

    async def _claim_loop(self) -> None:
        while not self._stopping:
            config = self.runtime().config
            if self._free_slots(config) <= 0:
                await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            more = False
            try:
                more = await self.run_once()
            except StoreError as exc:
                log.error("delivery_store_error", error=str(exc))
            if not more:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), config.delivery.poll_interval)

    def _free_slots(self, config: Config) -> int:
        # Twice the upstream connections: the next copies are rendered while others are sent.
        return config.upstream.connections * 2 - len(self._inflight)

    async def run_once(self) -> bool:
        """Claim what fits in the free slots and start delivering it; True if more may be due."""
        config = self.runtime().config
        limit = min(self._free_slots(config), config.delivery.batch)
        if limit <= 0:
            return True
        self._claims += 1
        now = self.clock.now()
        jobs = await self.store.claim(
            lease=f"{self.worker_id}:{self._claims}",
            now=now,
            lease_until=now + config.delivery.lease,
            limit=limit,
        )
        for job in jobs:
            self._leases[job.lease] = self._leases.get(job.lease, 0) + 1
            task = asyncio.create_task(self._deliver_logged(job))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(jobs) == limit

    async def drain(self) -> None:
        """Wait for every delivery in flight."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming; let deliveries in flight finish for `grace` seconds; free the rest."""
        self._stopping = True
        self._wake.set()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(StoreError):
            await self.store.release(f"{self.worker_id}:")

    async def _deliver_logged(self, job: DeliveryJob) -> None:
        try:
            await self.deliver(job)
        except StoreError as exc:
            # The recipient stays pending; its lease runs out and it is tried again.
            log.error("delivery_store_error", message_id=job.message_id, error=str(exc))
        except Exception as exc:
            log.exception("delivery_crashed", message_id=job.message_id, recipient=job.recipient)
            await self._crashed(job, exc)
        finally:
            remaining = self._leases.pop(job.lease, 1) - 1
            if remaining > 0:
                self._leases[job.lease] = remaining

    async def _crashed(self, job: DeliveryJob, error: Exception) -> None:
        """A delivery that raised is that recipient's failure, never the others'.

        It is retried on the schedule like a 4xx, and after `CRASH_LIMIT` attempts fails for
        good with a DSN. When even recording that fails (the DSN cannot be built, say), the
        recipient is marked failed without one, and `delivery_dead_letter` says so: it is never
        left to crash again at every lease.
        """
        config = self.runtime().config
        final = job.attempts + 1 >= CRASH_LIMIT
        reply = f"{'554 5.3.0' if final else '451 4.3.0'} The relay could not process this copy"
        result = SendResult(
            "permanent" if final else "transient", f"{reply} ({type(error).__name__})"
        )
        content = self._content.get(job.message_id, b"")
        try:
            await self.record(job, result, config, content)
        except Exception as again:  # noqa: BLE001 - the last resort must not raise
            try:
                done = await self.store.failed(
                    job, reply=result.reply, now=self.clock.now(), dsn=None
                )
            except StoreError as exc:
                log.error("delivery_store_error", message_id=job.message_id, error=str(exc))
                return
            if done:
                DELIVERIES.labels("failed").inc()
                log.error(
                    "delivery_dead_letter",
                    message_id=job.message_id,
                    recipient=job.recipient,
                    reply=result.reply,
                    error=type(again).__name__,
                )

    async def _load(self, message_id: str) -> bytes:
        """The message's content, from a small cache: a broadcast's copies share one load."""
        content = self._content.get(message_id)
        if content is None:
            content = await self.store.content(message_id)
            self._remember(message_id, content)
        else:
            self._content.move_to_end(message_id)
        return content

    def _remember(self, message_id: str, content: bytes) -> None:
        if message_id in self._content:
            return
        self._content[message_id] = content
        self._cached += len(content)
        while self._cached > CONTENT_CACHE_BYTES and len(self._content) > 1:
            _, dropped = self._content.popitem(last=False)
            self._cached -= len(dropped)

    async def deliver(self, job: DeliveryJob) -> None:
        """Render and send one recipient's copy, then record the outcome."""
        runtime = self.runtime()
        config, pipeline = runtime.config, runtime.pipeline
        content = await self._load(job.message_id)
        account = config.account(job.account_id) if job.account_id else None
        rendering = Rendering(
            job.message_id,
            account,
            job.mail_from,
            job.recipient,
            content,
            kind=job.kind,
            campaign=job.campaign,
            original=content,
            seven_bit=not content.isascii() and not await self.upstream.accepts_8bit(),
            recipient_id=job.recipient_id,
        )
        decision = await pipeline.render(rendering)
        if config.journal.enabled:
            job = replace(job, render=journal.render_notes(rendering.notes, decision))
        verdict = decision.verdict
        if isinstance(verdict, Continue):
            # The render may have pointed the envelope sender at the relay (bounce+TOKEN@).
            result = await self.upstream.send(rendering.mail_from, job.recipient, rendering.content)
            await self.record(job, result, config, content)
            return
        outcome: Outcome = "transient" if isinstance(verdict, Defer) else "permanent"
        await self.record(
            job, SendResult(outcome, verdict.reply()), config, content, rule=verdict.rule
        )

    async def record(
        self,
        job: DeliveryJob,
        result: SendResult,
        config: Config,
        content: bytes,
        *,
        rule: str | None = None,
    ) -> None:
        """Store the outcome of one attempt and log it."""
        now = self.clock.now()
        fields = {
            "message_id": job.message_id,
            "account_id": job.account_id,
            "recipient": job.recipient,
            "attempt": job.attempts + 1,
            "upstream_reply": result.reply,
        }
        if rule is not None:
            fields["rule"] = rule
        if result.outcome == "delivered":
            dsn = self._success_dsn(job, result, config, content, now=now)
            if await self.store.delivered(job, reply=result.reply, now=now, dsn=dsn):
                DELIVERIES.labels("delivered").inc()
                log.info("delivery_succeeded", **fields)
                if dsn is not None:
                    _dsn_queued(dsn, job, "notify_success")
                    self.wake()
            else:
                _lease_lost(fields)
            return
        expired = now - job.received_at >= config.delivery.max_age
        if result.outcome == "transient" and not expired:
            next_try = now + retry_delay(config.delivery, job.attempts + 1, self.rng)
            if await self.store.deferred(job, reply=result.reply, now=now, next_attempt=next_try):
                DELIVERIES.labels("deferred").inc()
                log.info("delivery_deferred", next_try=next_try, **fields)
            else:
                _lease_lost(fields)
            return
        dsn = self._dsn(job, result, config, content, now=now, expired=expired)
        if dsn is not None and job.render is not None:  # explain names the DSN it sent
            job = replace(job, render={**job.render, "dsn": dsn.id})
        if not await self.store.failed(job, reply=result.reply, now=now, dsn=dsn):
            _lease_lost(fields)
            return
        DELIVERIES.labels("failed").inc()
        log.warning("delivery_failed", expired=expired, **fields)
        if dsn is not None:
            _dsn_queued(dsn, job, "expired" if expired else "failed")
            self.wake()

    def _success_dsn(
        self, job: DeliveryJob, result: SendResult, config: Config, content: bytes, *, now: float
    ) -> NewMessage | None:
        """The `relayed` report of a copy the upstream took, when its sender asked for one."""
        if not job.dsn or not job.mail_from or job.kind == "dsn":
            return None
        request = dsnrequest.read(job.dsn, job.envelope_dsn)
        if not request.on_success:
            return None
        body = build_relayed_dsn(
            reporting_host=config.hostname,
            original=content,
            message_id=job.message_id,
            mail_from=job.mail_from,
            recipient=job.recipient,
            reply=result.reply,
            request=request,
            arrival=job.received_at,
            now=now,
        )
        return _notice(job, body, now)

    def _dsn(
        self,
        job: DeliveryJob,
        result: SendResult,
        config: Config,
        content: bytes,
        *,
        now: float,
        expired: bool,
    ) -> NewMessage | None:
        # Never a DSN about a DSN, nor to a null sender (RFC 5321 section 3.6.3), nor to one
        # that asked for none (NOTIFY without FAILURE, RFC 3461).
        if not job.mail_from or job.kind == "dsn":
            return None
        request = dsnrequest.read(job.dsn, job.envelope_dsn)
        if not request.on_failure:
            return None
        body = build_dsn(
            reporting_host=config.hostname,
            original=content,
            message_id=job.message_id,
            mail_from=job.mail_from,
            recipient=job.recipient,
            result=result,
            arrival=job.received_at,
            now=now,
            expired=expired,
            request=request,
        )
        return _notice(job, body, now)


def _notice(job: DeliveryJob, body: bytes, now: float) -> NewMessage:
    """The DSN `body` about `job`, from the null sender to the message's sender."""
    return NewMessage(
        id=new_message_id(),
        account_id=job.account_id,
        mail_from="",
        recipients=(job.mail_from,),
        content=body,
        received_at=now,
        kind="dsn",
    )


def _dsn_queued(dsn: NewMessage, job: DeliveryJob, reason: str) -> None:
    log.info(
        "dsn_queued",
        message_id=dsn.id,
        original_message_id=job.message_id,
        recipient=job.mail_from,
        reason=reason,
    )
