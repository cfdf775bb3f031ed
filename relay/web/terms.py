"""The page that accepts the terms of use: `GET /terms/{account}/{token}` shows, POST accepts.

The link comes in the reminder to the account's contact (relay.accounts.terms). The GET changes
nothing (link scanners open every link); the button POSTs to the same signed address, and the
acceptance is recorded with its time, the client's IP address and user agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import StoreError
from relay.logging import get_logger
from relay.storage.records import TermsAcceptance
from relay.web.forms import page
from relay.web.state import client_ip, clock_of, runtime_of, store_of

if TYPE_CHECKING:
    from aiohttp import web

    from relay.config import TermsConfig
    from relay.configaccounts import Account

log = get_logger(__name__)
MAX_USER_AGENT = 512


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
    "This link is not valid (it may have expired, or the terms changed since it was sent)."
    " Ask the relay's abuse desk for a new one."
)
_TITLE = "Terms of use"


async def terms_page(request: web.Request) -> web.Response:
    """The terms to accept and the button; changes nothing."""
    signed = _signed(request)
    if signed is None:
        return page("base.html", None, 400, title=_TITLE, text=_INVALID)
    account, terms = signed
    return page(
        "terms.html",
        None,
        200,
        title=_TITLE,
        account_id=account.id,
        account_name=account.brand.name,
        version=terms.version,
        hostname=runtime_of(request).config.hostname,
        url=terms.url,
        clause=terms.bulk_clause,
    )


async def terms_post(request: web.Request) -> web.Response:
    """Record the acceptance, with the time, IP address and user agent."""
    signed = _signed(request)
    if signed is None:
        return page("base.html", None, 400, title=_TITLE, text=_INVALID)
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
        return page("base.html", None, 503, title=_TITLE, text="Please try again in a few minutes.")
    if new:
        log.info(
            "terms_accepted",
            account_id=account.id,
            version=terms.version,
            by=acceptance.accepted_by,
            ip=acceptance.ip,
        )
    text = f"Thank you: account {account.id} accepted version {terms.version}."
    return page("base.html", None, 200, title="Terms accepted", text=text)


def add_routes(app: web.Application) -> None:
    """Register the terms pages."""
    app.router.add_get("/terms/{account}/{token}", terms_page)
    app.router.add_post("/terms/{account}/{token}", terms_post)
