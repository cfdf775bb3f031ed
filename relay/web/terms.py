"""The page that accepts the terms of use: `GET /terms/{account}/{token}` shows, POST accepts.

The link comes in the reminder to the account's contact (relay.accounts.terms). The GET changes
nothing (link scanners open every link); the button POSTs to the same signed address, and the
acceptance is recorded with its time, the client's IP address and user agent.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import StoreError
from relay.logging import get_logger
from relay.storage.base import TermsAcceptance
from relay.web.forms import page_headers
from relay.web.state import client_ip, clock_of, runtime_of, store_of

if TYPE_CHECKING:
    from relay.config import Account, TermsConfig

log = get_logger(__name__)
MAX_USER_AGENT = 512


def _page(title: str, body: str, status: int) -> web.Response:
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{escape(title)}</title>'
        "<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;"
        "padding:0 1em;color:#222}blockquote{border-left:3px solid #ccc;margin:1em 0;"
        "padding-left:1em}button{font-size:1em;padding:.6em 1.4em}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=page_headers()
    )


def _signed(request: web.Request) -> tuple[Account, TermsConfig] | None:
    """The account and the terms the link accepts, if the link is genuine and current."""
    runtime = runtime_of(request)
    terms = runtime.config.terms
    account = runtime.config.account(request.match_info["account"])
    if terms is None or account is None:
        return None
    token = request.match_info["token"]
    if not runtime.tokens.verify_terms_token(token, account.id, terms.version):
        return None
    return account, terms


_INVALID = (
    "<p>This link is not valid (it may have expired, or the terms changed since it was sent)."
    " Ask the relay's abuse desk for a new one.</p>"
)


async def terms_page(request: web.Request) -> web.Response:
    """The terms to accept and the button; changes nothing."""
    signed = _signed(request)
    if signed is None:
        return _page("Terms of use", _INVALID, 400)
    account, terms = signed
    url = escape(terms.url, quote=True)
    body = (
        f"<p>Account <strong>{escape(account.id)}</strong> ({escape(account.brand.name)}) is asked"
        f" to accept the terms of use version <strong>{escape(terms.version)}</strong> of"
        f" {escape(runtime_of(request).config.hostname)}.</p>"
        f'<p>Read them at <a href="{url}">{escape(terms.url)}</a>. Among them:</p>'
        f"<blockquote>{escape(terms.bulk_clause)}</blockquote>"
        '<form method="post"><button type="submit">I accept these terms</button></form>'
    )
    return _page("Terms of use", body, 200)


async def terms_post(request: web.Request) -> web.Response:
    """Record the acceptance, with the time, IP address and user agent."""
    signed = _signed(request)
    if signed is None:
        return _page("Terms of use", _INVALID, 400)
    account, terms = signed
    runtime = runtime_of(request)
    user_agent = request.headers.get("User-Agent", "")[:MAX_USER_AGENT] or None
    acceptance = TermsAcceptance(
        account.id,
        terms.version,
        clock_of(request).now(),
        f"web:{account.contact or account.id}",
        client_ip(request, runtime.config),
        user_agent,
    )
    try:
        new = await store_of(request).accept_terms(acceptance)
    except StoreError as exc:
        log.error("terms_accept_failed", account_id=account.id, error=str(exc))
        return _page("Terms of use", "<p>Please try again in a few minutes.</p>", 503)
    if new:
        log.info(
            "terms_accepted",
            account_id=account.id,
            version=terms.version,
            by=acceptance.accepted_by,
            ip=acceptance.ip,
        )
    text = (
        f"<p>Thank you: account {escape(account.id)} accepted version {escape(terms.version)}.</p>"
    )
    return _page("Terms accepted", text, 200)


def add_routes(app: web.Application) -> None:
    """Register the terms pages."""
    app.router.add_get("/terms/{account}/{token}", terms_page)
    app.router.add_post("/terms/{account}/{token}", terms_post)
