"""The HTTP server (aiohttp): unsubscribe pages, complaint intake, /healthz and /metrics.

`GET /u/{token}` shows the account's branded page with an Unsubscribe button and changes
nothing (link scanners fetch every link). `POST /u/{token}` unsubscribes: the RFC 8058 one-click
body (form-data or urlencoded, parsed leniently) or the page's button. It answers 200 with a
confirmation page, is idempotent, and never redirects. A forged or expired token gets a 400 page.

Subscription forms, confirmation links and the subscription API are in `relay.web.forms`.

`POST /admin/v1/complaints` takes one complaint report (the raw message) with
`Authorization: Bearer TOKEN`, where `web.admin_token_hash` is the token's hash; without that
setting the endpoint does not exist (404). Failed tokens are throttled per client address.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.cluster import HEARTBEAT, read_status, show_metrics
from relay.consent.optout import Method, unsubscribe
from relay.errors import StoreError
from relay.logging import get_logger
from relay.mail.branding import page
from relay.metrics import (
    CERTIFICATE_EXPIRY,
    REGISTRY,
    SPOOL_OLDEST_AGE,
    SPOOL_PENDING,
)
from relay.smtp.throttle import FailureThrottle
from relay.tlsutil import certificate_expiry
from relay.web import api, dashboard, forms, terms
from relay.web.state import (
    admin_refusal,
    client_ip,
    clock_of,
    crash_barrier,
    json_error,
    read_form,
    runtime_of,
    share,
    store_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from relay.accounts.credentials import Credentials
    from relay.clock import Clock
    from relay.consent.subscriptions import Subscriptions
    from relay.feedback.intake import Feedback
    from relay.runtime import Runtime
    from relay.storage.base import Store
    from relay.tokens import Claim

log = get_logger(__name__)
FEEDBACK_KEY = web.AppKey("feedback", object)
CLUSTER_READ_KEY = web.AppKey("cluster_read", list[float])  # when /metrics last read the cluster


def _html(body: str, status: int) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=forms.page_headers(),
    )


def _link(request: web.Request) -> tuple[Runtime, Claim | None, str, str]:
    """The runtime, the token's claim (None if forged or expired) and the brand to show."""
    runtime = runtime_of(request)
    claim = runtime.tokens.verify(request.match_info["token"])
    account = runtime.config.account(claim.account_id) if claim else None
    if account is None:
        return runtime, claim, "this sender", "en"
    return runtime, claim, account.brand.name, account.brand.language


async def unsubscribe_page(request: web.Request) -> web.Response:
    """The confirmation page; changes nothing."""
    _, claim, name, language = _link(request)
    if claim is None:
        return _html(page(name, language, "invalid"), 400)
    body = page(name, language, "confirm", address=claim.recipient, action=request.path)
    return _html(body, 200)


async def unsubscribe_post(request: web.Request) -> web.Response:
    """One-click (RFC 8058) or the page's button: suppress the recipient, say so."""
    runtime, claim, name, language = _link(request)
    if claim is None:
        return _html(page(name, language, "invalid"), 400)
    try:
        form = await read_form(request)
    except web.HTTPException:
        form = None  # RFC 8058 section 8.3's own example is malformed: the POST itself decides
    method: Method = "page" if form is not None and form.get("source") == "page" else "one_click"
    clock = clock_of(request)
    try:
        await unsubscribe(store_of(request), runtime.config, claim, method=method, now=clock.now())
    except StoreError:
        return _html(page(name, language, "unavailable"), 503)
    return _html(page(name, language, "done", address=claim.recipient), 200)


async def healthz(request: web.Request) -> web.Response:
    """200 when the store answers, 503 otherwise.

    `?verbose` (with the admin token) adds the cluster's status (relay.cluster): the nodes,
    their leases, the queue, the webhooks' lag and the schema, as `optin-relay status --json`.
    """
    verbose = "verbose" in request.query
    if verbose:
        refused = await admin_refusal(request)
        if refused is not None:
            return refused
    store = store_of(request)
    try:
        await store.ping()
        if not verbose:
            return web.json_response({"status": "ok"})
        runtime = runtime_of(request)
        status = await read_status(
            store, runtime.config, await store.schema_state(), clock_of(request).now()
        )
    except StoreError:
        return web.json_response({"status": "unavailable", "store": "down"}, status=503)
    return web.json_response({"status": "ok", "cluster": status.as_json()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition; the spool backlog is read from the store at each scrape.

    Served to clients on this machine (loopback, after any trusted proxy); anyone else needs the
    admin bearer token (`web.admin_token_hash`), so a public `web.listen` does not publish the
    relay's volumes and refusals.
    """
    runtime = runtime_of(request)
    client = client_ip(request, runtime.config)
    if not _loopback(client):
        refused = await admin_refusal(request)
        if refused is not None:
            return refused
    store, now = store_of(request), clock_of(request).now()
    try:
        pending, oldest = await store.backlog()
        last = request.app[CLUSTER_READ_KEY]
        if now - last[0] >= HEARTBEAT or now < last[0]:
            # The cluster's snapshot costs a count per webhook endpoint: read at most once per
            # heartbeat, whatever the scrape interval (the gauges keep the last values between).
            last[0] = now
            status = await read_status(store, runtime.config, await store.schema_state(), now)
            show_metrics(status)
    except StoreError as exc:
        log.warning("metrics_store_unavailable", error=str(exc))  # the gauges keep their values
    else:
        SPOOL_PENDING.set(pending)
        SPOOL_OLDEST_AGE.set(0 if oldest is None else max(0.0, now - oldest))
    if runtime.config.smtp.tls is not None:
        with contextlib.suppress(OSError, ValueError):
            CERTIFICATE_EXPIRY.set(certificate_expiry(runtime.config.smtp.tls.certificate))
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = await request.content.read(limit + 1)
    return None if len(body) > limit else body


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def ingest_complaint(request: web.Request) -> web.Response:
    """Take one complaint report from the abuse desk's tools (bearer token)."""
    refused = await admin_refusal(request)
    if refused is not None:
        return refused
    runtime = runtime_of(request)
    body = await _read_limited(request, runtime.config.smtp.max_message_size)
    if body is None:
        return json_error(413, "too_large", "the report exceeds smtp.max_message_size")
    if not body.strip():
        return json_error(400, "empty", "the body must be the report message")
    feedback: Feedback = request.app[FEEDBACK_KEY]  # type: ignore[assignment]
    try:
        result = await feedback.complaint(body, source="http", trusted=True)
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    if result.outcome == "malformed":
        return json_error(422, "malformed_report", result.cause)
    return web.json_response(
        {
            "outcome": result.outcome,
            "cause": result.cause,
            "case_id": result.case_id,
            "account_id": result.account_id,
            "recipient": result.recipient,
        }
    )


def make_app(
    store: Store,
    runtime: Callable[[], Runtime],
    clock: Clock,
    *,
    feedback: Feedback,
    subscriptions: Subscriptions,
    credentials: Credentials,
) -> web.Application:
    """The aiohttp application."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[crash_barrier])
    smtp = runtime().config.smtp
    throttle = FailureThrottle(smtp.auth_failure_limit, smtp.auth_failure_window, clock)
    share(app, store, runtime, clock, throttle, credentials=credentials)
    app[FEEDBACK_KEY] = feedback
    app[CLUSTER_READ_KEY] = [float("-inf")]
    forms.add_routes(app, subscriptions)
    api.add_routes(app)
    terms.add_routes(app)
    dashboard.add_routes(app)
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe_post)
    app.router.add_post("/admin/v1/complaints", ingest_complaint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
