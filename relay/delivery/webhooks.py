"""Webhooks: each account's events pushed to its endpoints, signed per Standard Webhooks.

Every endpoint (`accounts[].webhooks`) walks its account's event feed (docs/events.md) from the
newest event at the time it was first configured. One relay process at a time holds an
endpoint's lease (several relays share the work on one store), sends its events in order, one
request each, and records its place after every 2xx: delivery is at least once, and the
`webhook-id` header (the event's id) lets the receiver drop a repeat.

- **Signed** with the `standardwebhooks` package: `webhook-id`, `webhook-timestamp` and one
  `webhook-signature` per configured secret (a list while rotating).
- **Untrusted URLs**: the host is resolved first, and an endpoint whose addresses include a
  loopback, private, link-local (cloud metadata), multicast or reserved one is refused, unless
  `webhooks.allow_private`. The request then goes to the addresses checked, not to a second
  lookup. Redirects are not followed; at most 64 KiB of the answer is read.
- **Retried**: anything but a 2xx within `webhooks.timeout` is a failure, retried with
  exponential backoff and jitter (5 s doubling, at most 6 hours apart); an endpoint failing for
  `webhooks.retry_for` (3 days) is disabled (`webhook_disabled`) until `optin-relay webhooks
  enable`. The events wait in the store meanwhile: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook as Signer

from relay.errors import CursorError, StoreError
from relay.logging import get_logger
from relay.mail.compose import relay_mail

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.clock import Clock
    from relay.config import Config
    from relay.configaccounts import Account, Webhook
    from relay.runtime import Runtime
    from relay.storage.base import Store
    from relay.storage.records import Event

log = get_logger(__name__)
PAGE = 50
ROUND_PAGES = 20  # events sent under one lease, at most PAGE * ROUND_PAGES
MAX_ANSWER = 64 * 1024
FIRST_RETRY = 5.0
LONGEST_RETRY = 6 * 3600.0


def endpoint_key(account_id: str, url: str) -> str:
    """The stored name of one endpoint of one account."""
    return hashlib.sha256(f"{account_id}\n{url}".encode()).hexdigest()[:32]


def retry_delay(attempts: int, rng: random.Random) -> float:
    """Seconds before the next try after `attempts` failures: doubling, capped, jittered."""
    base = min(FIRST_RETRY * 2 ** max(attempts - 1, 0), LONGEST_RETRY)
    return float(base * rng.uniform(0.8, 1.2))


# IPv6 forms that carry an IPv4 address in their last 32 bits: the NAT64 well-known prefix
# (RFC 6052) and the deprecated IPv4-compatible form (RFC 4291 2.5.5.1). The NAT64 local-use
# prefix (RFC 8215) is the operator's own network, whatever it embeds.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to, where its form embeds one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002::/16: the IPv4 address in bits 16-47
        return ip.sixtofour
    if ip.teredo is not None:  # 2001::/32: the client's address, obfuscated (the library undoes it)
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # neither :: nor ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden(address: str) -> bool:
    """Whether an endpoint may not be on `address` (unless `webhooks.allow_private`).

    An IPv6 address that embeds an IPv4 one (mapped, 6to4, Teredo, NAT64, IPv4-compatible)
    is judged by the IPv4 address it reaches as well as by itself.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return True
        embedded = _embedded_ipv4(ip)
        if embedded is not None and forbidden(str(embedded)):
            return True
        if ip.ipv4_mapped is not None:
            return False  # judged as the IPv4 address alone (::ffff:0:0/96 is not global)
    return not ip.is_global or ip.is_multicast


def never_allowed(config: Config) -> list[str]:
    """Endpoints whose URL names a literal address that `forbidden` refuses (for check-config).

    Only literal addresses: a host name's addresses are looked up (and checked) at each round.
    """
    if config.webhooks.allow_private:
        return []
    problems: list[str] = []
    for index, account in enumerate(config.accounts):
        for number, hook in enumerate(account.webhooks):
            host = urlsplit(hook.url).hostname or ""
            try:
                refused = forbidden(host)
            except ValueError:
                continue  # a host name
            if refused:
                problems.append(
                    f"accounts[{index}].webhooks[{number}].url: {host} is a private or reserved"
                    " address and webhooks.allow_private is off: the relay will never call it"
                )
    return problems


@dataclass
class _Progress:
    """Where an endpoint is while one relay serves it."""

    lease: str
    cursor: str | None
    attempts: int
    since: float | None

    def delivered(self, cursor: str) -> None:
        """An event got its 2xx: the endpoint is healthy at `cursor`."""
        self.cursor, self.attempts, self.since = cursor, 0, None

    def failure(self, error: str) -> _Failure:
        """The record of a failed attempt from here."""
        return _Failure(self.lease, self.attempts + 1, self.since, error[:500])


@dataclass(frozen=True)
class _Failure:
    """A failed attempt: the lease it happened under, the count, since when, and why."""

    lease: str
    attempts: int
    since: float | None
    error: str


class WebhookRefused(Exception):  # noqa: N818 - a refusal, not a crash
    """The endpoint's URL may not be called (a private address, an unknown host)."""


class _Pinned(AbstractResolver):
    """A resolver that answers with the addresses already checked (no second lookup)."""

    def __init__(self, answers: list[ResolveResult]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        del host, port, family
        return self.answers

    async def close(self) -> None:
        return None


async def _checked_addresses(host: str, port: int, *, allow_private: bool) -> list[ResolveResult]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"cannot resolve {host}: {exc}") from exc
    answers: list[ResolveResult] = []
    for family, _, proto, _, sockaddr in infos:
        address = str(sockaddr[0])
        if not allow_private and forbidden(address):
            raise WebhookRefused(f"{host} resolves to {address}, a private or reserved address")
        answers.append(
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": family,
                "proto": proto,
                "flags": socket.AI_NUMERICHOST,
            }
        )
    if not answers:
        raise WebhookRefused(f"{host} has no address")
    return answers


async def endpoint_session(
    hook: Webhook, *, seconds: float, allow_private: bool
) -> aiohttp.ClientSession:
    """A client session to `hook`'s checked addresses only (kept open for a round of events).

    Raises WebhookRefused when the host resolves to an address the endpoint may not have.
    """
    parts = urlsplit(hook.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answers = await _checked_addresses(host, port, allow_private=allow_private)
    connector = aiohttp.TCPConnector(resolver=_Pinned(answers), use_dns_cache=False, limit=1)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds))


async def post(
    hook: Webhook,
    event: Event,
    *,
    seconds: float,
    allow_private: bool,
    session: aiohttp.ClientSession | None = None,
) -> str | None:
    """Send one event to `hook`; None when it answered 2xx, else what went wrong.

    Through `session` when given (see endpoint_session), else a session of its own.
    """
    body = json.dumps(event.payload(), separators=(",", ":"))
    sent_at = datetime.now(UTC)  # the receiver checks it against its own clock
    signatures = [
        Signer(secret.get_secret_value()).sign(event.id, sent_at, body) for secret in hook.secret
    ]
    headers = {
        "content-type": "application/json",
        "user-agent": "optin-relay",
        "webhook-id": event.id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
    try:
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(
                    await endpoint_session(hook, seconds=seconds, allow_private=allow_private)
                )
            answer = await stack.enter_async_context(
                session.post(hook.url, data=body, headers=headers, allow_redirects=False)
            )
            await answer.content.read(MAX_ANSWER)  # capped: the body is not needed
            if 200 <= answer.status < 300:  # noqa: PLR2004
                return None
            return f"HTTP {answer.status}"
    except WebhookRefused as exc:
        return f"refused: {exc}"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}".strip()


class Webhooks:
    """Pushes every account's events to its endpoints, in the background."""

    def __init__(
        self,
        store: Store,
        runtime: Callable[[], Runtime],
        clock: Clock,
        *,
        node: str,
        rng: random.Random | None = None,
    ) -> None:
        """Read events from `store`; `node` names this process in the leases it takes."""
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.node = node
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._busy: set[str] = set()
        self._known: set[str] = set()  # endpoints stored already
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Look for work now (an event was written, or a test moved the clock)."""
        self._wake.set()

    async def run(self) -> None:
        """Serve due endpoints until cancelled."""
        while True:
            config = self.runtime().config
            try:
                await self.round()
            except StoreError as exc:
                log.warning("webhook_store_error", account_id=None, url=None, error=str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), config.webhooks.poll_interval)

    async def round(self) -> None:
        """Start serving each endpoint with events to send, up to the concurrency.

        Decided on reads alone: an endpoint that is disabled, waiting for its next try, or
        already at its account's newest event costs no write.
        """
        config = self.runtime().config
        if not any(account.webhooks for account in config.accounts):
            return  # no endpoint: not even a read
        now = self.clock.now()
        states = {state.key: state for state in await self.store.webhook_states()}
        if self._stopping:
            return
        tails: dict[str, str | None] = {}
        for account in config.accounts:
            for hook in account.webhooks:
                key = endpoint_key(account.id, hook.url)
                if key in self._busy or len(self._busy) >= config.webhooks.concurrency:
                    continue
                state = states.get(key)
                if state is not None:
                    if state.disabled_at is not None or state.next_attempt > now:
                        continue
                    if account.id not in tails:
                        tails[account.id] = await self.store.events_tail(account.id)
                    if state.cursor == tails[account.id]:
                        continue  # nothing new
                self._busy.add(key)
                task = asyncio.create_task(self._serve(account, hook, key), name=f"webhook-{key}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel what is in flight (its events stay in the store, sent again later)."""
        self._stopping = True  # no new round starts anything
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, account: Account, hook: Webhook, key: str) -> None:
        try:
            await self._serve_leased(account, hook, key)
        except StoreError as exc:
            log.warning("webhook_store_error", account_id=account.id, url=hook.url, error=str(exc))
        except CursorError as exc:  # its place lies past the feed (a store restored from backup)
            log.error("webhook_cursor_invalid", account_id=account.id, url=hook.url, error=str(exc))
        finally:
            self._busy.discard(key)

    async def _serve_leased(self, account: Account, hook: Webhook, key: str) -> None:
        settings = self.runtime().config.webhooks
        now = self.clock.now()
        lease = f"{self.node}:{key}:{time.monotonic_ns()}"
        state = await self.store.webhook_lease(
            key,
            account.id,
            hook.url,
            # Where a new endpoint starts; an endpoint already stored keeps its place.
            start=None if key in self._known else await self.store.events_tail(account.id),
            lease=lease,
            now=now,
            lease_until=now + settings.lease,
        )
        self._known.add(key)
        if state is None:
            return  # not due, disabled, or served by another process
        progress = _Progress(lease, state.cursor, state.attempts, state.failing_since)
        try:
            page = await self._page(account, progress.cursor)
            if not page:
                return
            try:
                session = await endpoint_session(
                    hook, seconds=settings.timeout, allow_private=settings.allow_private
                )
            except WebhookRefused as exc:
                await self._failed(account, hook, key, progress.failure(f"refused: {exc}"))
                progress.lease = ""  # given back by the failure record
                return
            async with session:  # one connection for the round (keep-alive)
                for _ in range(ROUND_PAGES):  # then the lease goes back (a lost one ends it)
                    sent = await self._send(
                        account, hook, key, progress, page=page, session=session
                    )
                    page = await self._page(account, progress.cursor) if sent else []
                    if not page:
                        break
        finally:
            if progress.lease:
                await self.store.webhook_release(key, progress.lease)

    async def _page(self, account: Account, cursor: str | None) -> list[Event]:
        # Every event, also those the endpoint does not take: its place moves past them, so an
        # endpoint at the newest event is known to have nothing to do.
        return await self.store.events(account.id, after=cursor, limit=PAGE)

    async def _send(
        self,
        account: Account,
        hook: Webhook,
        key: str,
        progress: _Progress,
        *,
        page: list[Event],
        session: aiohttp.ClientSession,
    ) -> bool:
        """Send `page` in order; False once one failed (recorded, lease given back)."""
        settings = self.runtime().config.webhooks
        types = frozenset(hook.events)
        skipped = 0  # events since the last recorded place that the endpoint does not take
        for event in page:
            if types and event.type not in types:
                skipped += 1
                progress.cursor = event.cursor  # only its place moves
                continue
            error = await post(
                hook,
                event,
                seconds=settings.timeout,
                allow_private=settings.allow_private,
                session=session,
            )
            if error is not None:
                await self._failed(account, hook, key, progress.failure(error))
                progress.lease = ""  # given back by the failure record
                return False
            progress.delivered(event.cursor)
            skipped = 0
            if not await self._advance(key, progress, sent=1):
                return False
            log.info(
                "webhook_delivered",
                account_id=account.id,
                url=hook.url,
                event_id=event.id,
                type=event.type,
            )
        # A page that ends with events the endpoint does not take: keep its place past them.
        return not skipped or await self._advance(key, progress, sent=0)

    async def _advance(self, key: str, progress: _Progress, *, sent: int) -> bool:
        """Record the endpoint's place and renew the lease; False when the lease ran out.

        Renewed at each event, the lease outlasts the next request (`webhooks.lease` is longer
        than `webhooks.timeout`); a relay that died stops renewing, and within `lease` another
        relay takes the endpoint over.
        """
        assert progress.cursor is not None  # noqa: S101 - set by the event just handled
        renewed = self.clock.now() + self.runtime().config.webhooks.lease
        if await self.store.webhook_advance(
            key, progress.lease, cursor=progress.cursor, sent=sent, lease_until=renewed
        ):
            return True
        progress.lease = ""
        return False

    async def _failed(self, account: Account, hook: Webhook, key: str, failure: _Failure) -> None:
        settings = self.runtime().config.webhooks
        now = self.clock.now()
        since = failure.since if failure.since is not None else now
        disable = now - since >= settings.retry_for
        next_attempt = now + retry_delay(failure.attempts, self.rng)
        await self.store.webhook_fail(
            key,
            failure.lease,
            error=failure.error,
            now=now,
            next_attempt=next_attempt,
            disable=disable,
        )
        fields: dict[str, Any] = {"account_id": account.id, "url": hook.url, "error": failure.error}
        if disable:
            log.warning("webhook_disabled", failing_since=since, **fields)
            await self._tell_contact(account, hook, failure.error, now=now)
        else:
            log.info(
                "webhook_failed", attempt=failure.attempts, next_attempt=next_attempt, **fields
            )

    async def _tell_contact(
        self, account: Account, hook: Webhook, error: str, *, now: float
    ) -> None:
        """Mail the account's contact that its endpoint is disabled, and how to enable it."""
        if account.contact is None:
            return
        config = self.runtime().config
        days = config.webhooks.retry_for / 86400
        notice = relay_mail(
            config,
            account_id=account.id,
            sender=(f"{config.hostname} webhooks", f"postmaster@{config.relay_domain}"),
            to=account.contact,
            subject=f"Webhook disabled: {hook.url}",
            text=(
                f"The webhook endpoint {hook.url} of account {account.id} has failed for"
                f" {days:g} days and is disabled.\n\nThe last error: {error}\n\n"
                "No event is lost: they wait in the relay. Once the endpoint works again, ask"
                " the relay's operator to run `optin-relay webhooks enable` for it, or read the"
                " events from GET /api/v1/events.\n"
            ),
            now=now,
        )
        await self.store.spool(notice)
        log.info("webhook_notice_queued", account_id=account.id, url=hook.url, message_id=notice.id)
