"""The API for CRMs: what the relay decided about an account's mail, read back in order.

Every endpoint takes the account's API key (`Authorization: Bearer ACCOUNT_ID:SECRET`, the
secret hashed in `accounts[].api_key_hash`); errors are JSON with a stable `error` code.
`GET /api/v1/events` pages through the account's events (docs/events.md) by cursor: each page's
`next` is where the next request starts, and paging never skips or repeats an event, with several
relays on one store. `/api/v1/suppressions` lists, checks, adds and removes the account's
suppressions: a CRM may remove only what it added itself (an unsubscribe, a complaint or a bounce
is lifted only by a confirmed re-subscription). `/api/v1/openapi.json` describes all of it. The
subscription endpoints live with the forms (`relay/web/forms.py`).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import CursorError, StoreError
from relay.logging import get_logger
from relay.storage.events import EVENT_TYPES
from relay.storage.records import GLOBAL_SCOPE, Suppression, normalize_address
from relay.web.state import (
    client_ip,
    clock_of,
    credentials_of,
    json_error,
    runtime_of,
    store_of,
    throttle_of,
)

if TYPE_CHECKING:
    from relay.configaccounts import Account

log = get_logger(__name__)
MAX_PAGE = 1000
MAX_CURSOR = 64
MAX_ADDRESS = 254
_ADDRESS = re.compile(r"[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+")  # as in openapi.json
_PAGE_CURSOR = re.compile(r"[A-Za-z0-9_-]{0,1000}")
_CURSOR_CHARS = frozenset("0123456789.")


async def api_account(request: web.Request) -> Account | web.Response:
    """The account whose API key the request carries, or the 401/429 answer."""
    config = runtime_of(request).config
    throttle = throttle_of(request)
    ip = client_ip(request, config) or "unknown"
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    account_id, _, secret = credentials.strip().partition(":")
    account = config.account(account_id) if scheme.lower() == "bearer" else None
    async with throttle.turn(ip):  # as SMTP AUTH: simultaneous guesses cannot all be checked
        if throttle.blocked(ip):
            return json_error(429, "throttled", "too many failed attempts, try again later")
        if (
            account is not None
            and account.api_key_hash is not None
            and secret
            and await credentials_of(request).api_key(account, secret)
        ):
            return account
        throttle.record(ip)
    log.warning("api_auth_failed", client_ip=ip, path=request.path)
    return json_error(
        401,
        "unauthorized",
        "send Authorization: Bearer ACCOUNT_ID:API_KEY",
        **{"WWW-Authenticate": 'Bearer realm="optin-relay"'},
    )


async def closed_refusal(request: web.Request, account: Account) -> web.Response | None:
    """The 403 for a write by a terminated account (None when the account may write).

    A terminated account's key still reads its events, suppressions and opt-in records (so the
    CRM can clean up), but adds and lifts nothing. A suspended account's key works in full: a
    suspension is to be answered, and the CRM needs the API to answer it.
    """
    try:
        state = await store_of(request).account_state(account.id)
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    if state is not None and state.state == "terminated":
        return json_error(403, "account_closed", f"account {account.id} is terminated")
    return None


async def api_events(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per error
    """`GET /api/v1/events?after=CURSOR&types=A,B&limit=N`: the account's next events."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    after = request.query.get("after") or None
    if after is not None and (len(after) > MAX_CURSOR or not set(after) <= _CURSOR_CHARS):
        return json_error(400, "invalid_cursor", "after: a cursor from an earlier page's next")
    limit_text = request.query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_PAGE:
        return json_error(400, "invalid_limit", f"limit: a whole number from 1 to {MAX_PAGE}")
    types = None
    if "types" in request.query:
        types = frozenset(t.strip() for t in request.query["types"].split(",") if t.strip())
        if not types:
            return json_error(400, "unknown_type", "types: name one event type or more")
        unknown = sorted(types - set(EVENT_TYPES))
        if unknown:
            return json_error(400, "unknown_type", f"types: unknown {', '.join(unknown)}")
    try:
        page = await store_of(request).events(
            account.id, after=after, types=types, limit=int(limit_text)
        )
    except CursorError:
        return json_error(400, "invalid_cursor", "after: a cursor from an earlier page's next")
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    return web.json_response(
        {
            "events": [event.payload() for event in page],
            "next": page[-1].cursor if page else after,
        }
    )


def _suppression(entry: Suppression) -> dict[str, object]:
    return {
        "address": entry.address,
        "scope": "account" if entry.scope != GLOBAL_SCOPE else "global",
        "reason": entry.reason,
        "source": entry.source,
        "created_at": entry.created_at,
    }


def _page_cursor(entry: Suppression) -> str:
    raw = f"{entry.address}\n{entry.scope}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_start(cursor: str) -> tuple[str, str] | None:
    """Where a page starts: any base64url text is a place in the (address, scope) order."""
    if not _PAGE_CURSOR.fullmatch(cursor):
        return None
    if len(cursor) % 4 == 1:  # no base64 text has that length: its last character says nothing
        cursor = cursor[:-1]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    address, _, scope = raw.decode("utf-8", "replace").replace("\x00", "").partition("\n")
    return address, scope


async def api_suppressions(request: web.Request) -> web.Response:
    """`GET /api/v1/suppressions?after=CURSOR&limit=N`: the account's own suppressions.

    Never the global list: it holds addresses that other accounts' recipients gave, which one
    tenant must not read. A global suppression shows when the CRM asks for that address.
    """
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    start: tuple[str, str] | None = ("", "")
    if request.query.get("after"):
        start = _page_start(request.query["after"])
        if start is None:
            return json_error(400, "invalid_cursor", "after: a cursor from an earlier page's next")
    limit_text = request.query.get("limit", "100")
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= MAX_PAGE:
        return json_error(400, "invalid_limit", f"limit: a whole number from 1 to {MAX_PAGE}")
    limit = int(limit_text)
    try:
        # One more than asked: whether another page follows (the last page's `next` is null).
        page = await store_of(request).suppressions(
            scope=account.id, after=start or ("", ""), limit=limit + 1
        )
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    return web.json_response(
        {
            "suppressions": [_suppression(entry) for entry in page[:limit]],
            "next": _page_cursor(page[limit - 1]) if len(page) > limit else None,
        }
    )


async def api_suppression(request: web.Request) -> web.Response:
    """`GET /api/v1/suppressions/{address}`: whether (and why) mail to it is refused."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    address = request.match_info["address"]
    try:
        entry = await store_of(request).suppressed(address, account.id)
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    if entry is None:
        return json_error(404, "not_suppressed", "mail to this address is not suppressed")
    return web.json_response(_suppression(entry))


def _address_problem(address: object) -> str | None:
    """Why `address` is no address to suppress (the OpenAPI document's pattern), or None."""
    if not isinstance(address, str) or not 3 <= len(address) <= MAX_ADDRESS:  # noqa: PLR2004
        return f"address: a string of 3 to {MAX_ADDRESS} characters"
    if not _ADDRESS.fullmatch(address):
        return "address: LOCAL@DOMAIN, without spaces or control characters"
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        return "address: not valid Unicode"
    return None


async def api_suppress(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per error
    """`POST /api/v1/suppressions` `{"address": ...}`: the CRM's own suppression (reason manual)."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    refusal = await closed_refusal(request, account)
    if refusal is not None:
        return refusal
    try:
        body = json.loads(await request.text())
    except (ValueError, LookupError):
        return json_error(400, "invalid_json", "the body must be a JSON object")
    if not isinstance(body, dict) or set(body) - {"address"}:
        return json_error(400, "invalid_request", 'the body is {"address": ADDRESS}')
    problem = _address_problem(body.get("address"))
    if problem is not None:
        return json_error(422, "invalid_address", problem)
    now = clock_of(request).now()
    entry = Suppression(body["address"], account.id, "manual", "api", now)
    try:
        added = await store_of(request).suppress(entry, actor=f"api:{account.id}")
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    return web.json_response(
        {"address": normalize_address(entry.address), "added": added}, status=201 if added else 200
    )


async def api_unsuppress(request: web.Request) -> web.Response:
    """`DELETE /api/v1/suppressions/{address}`: lift a suppression the CRM added itself."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    refusal = await closed_refusal(request, account)
    if refusal is not None:
        return refusal
    address = normalize_address(request.match_info["address"])
    store = store_of(request)
    try:
        own = [
            entry
            for entry in await store.suppressions(scope=account.id, after=(address, ""), limit=1)
            if entry.address == address
        ]
        if not own:
            return json_error(404, "not_suppressed", "the account has no suppression of it")
        if own[0].reason != "manual" or own[0].source != "api":
            return json_error(
                403,
                "not_yours",
                f"a suppression for {own[0].reason} is lifted only by a confirmed re-subscription",
            )
        await store.unsuppress(
            address,
            account.id,
            reason="removed by the account's API",
            actor=f"api:{account.id}",
            now=clock_of(request).now(),
        )
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    return web.json_response({"address": address, "removed": True})


OPENAPI = Path(__file__).with_name("openapi.json")


async def api_domains(request: web.Request) -> web.Response:
    """`GET /api/v1/domains`: the account's domains as DNS last proved them, and its rules.

    What a CRM shows its customer: each From domain's requirements with the record to publish,
    and the account against the mailbox providers' bulk-sender rules (relay.readiness).
    """
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    from relay.readiness import readiness  # noqa: PLC0415 - one endpoint's module
    from relay.storage.domainchecks import DomainCheck  # noqa: PLC0415

    try:
        ready = await readiness(
            runtime_of(request).config, store_of(request), account, now=clock_of(request).now()
        )
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    checked = {check.domain: check for check in ready.domains}
    domains = []
    for name in account.from_domains:
        entry = asdict(checked.get(name) or DomainCheck(account.id, name, "pending"))
        del entry["account_id"]
        domains.append(entry)
    rules = [asdict(rule) for rule in ready.rules]
    return web.json_response(
        {"account": account.id, "ready": ready.ready, "domains": domains, "rules": rules}
    )


async def api_openapi(request: web.Request) -> web.Response:
    """`GET /api/v1/openapi.json`: the OpenAPI 3.1 description of this API (no key needed)."""
    del request
    return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Register the API routes of this module."""
    app.router.add_get("/api/v1/openapi.json", api_openapi)
    app.router.add_get("/api/v1/events", api_events)
    app.router.add_get("/api/v1/domains", api_domains)
    app.router.add_get("/api/v1/suppressions", api_suppressions)
    app.router.add_post("/api/v1/suppressions", api_suppress)
    app.router.add_get("/api/v1/suppressions/{address:[\\s\\S]+}", api_suppression)
    app.router.add_delete("/api/v1/suppressions/{address:[\\s\\S]+}", api_unsuppress)
