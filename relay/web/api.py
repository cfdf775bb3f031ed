"""The API for CRMs: what the relay decided about an account's mail, read back in order.

Every endpoint takes the account's API key (`Authorization: Bearer ACCOUNT_ID:SECRET`, the
secret hashed in `accounts[].api_key_hash`); errors are JSON with a stable `error` code.
`GET /api/v1/events` pages through the account's events (docs/events.md) by cursor: each page's
`next` is where the next request starts, and paging never skips or repeats an event, with several
relays on one store. The subscription endpoints live with the forms (`relay/web/forms.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import StoreError
from relay.logging import get_logger
from relay.storage.events import EVENT_TYPES
from relay.web.state import (
    client_ip,
    credentials_of,
    json_error,
    runtime_of,
    store_of,
    throttle_of,
)

if TYPE_CHECKING:
    from relay.config import Account

log = get_logger(__name__)
MAX_PAGE = 1000
MAX_CURSOR = 64
_CURSOR_CHARS = frozenset("0123456789.")


async def api_account(request: web.Request) -> Account | web.Response:
    """The account whose API key the request carries, or the 401/429 answer."""
    config = runtime_of(request).config
    throttle = throttle_of(request)
    ip = client_ip(request, config) or "unknown"
    if throttle.blocked(ip):
        return json_error(429, "throttled", "too many failed attempts, try again later")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    account_id, _, secret = credentials.strip().partition(":")
    account = config.account(account_id) if scheme.lower() == "bearer" else None
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


async def api_events(request: web.Request) -> web.Response:
    """`GET /api/v1/events?after=CURSOR&types=A,B&limit=N`: the account's next events."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    after = request.query.get("after") or None
    if after is not None and (len(after) > MAX_CURSOR or not set(after) <= _CURSOR_CHARS):
        return json_error(400, "invalid_cursor", "after: a cursor from an earlier page's next")
    limit_text = request.query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        return json_error(400, "invalid_limit", f"limit: a whole number from 1 to {MAX_PAGE}")
    types = None
    if request.query.get("types"):
        types = frozenset(t.strip() for t in request.query["types"].split(",") if t.strip())
        unknown = sorted(types - set(EVENT_TYPES))
        if unknown:
            return json_error(400, "unknown_type", f"types: unknown {', '.join(unknown)}")
    try:
        page = await store_of(request).events(
            account.id, after=after, types=types, limit=int(limit_text)
        )
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    return web.json_response(
        {
            "events": [event.payload() for event in page],
            "next": page[-1].cursor if page else after,
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the API routes of this module."""
    app.router.add_get("/api/v1/events", api_events)
