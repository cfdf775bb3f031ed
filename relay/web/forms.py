"""HTTP for confirmed opt-in: the hosted forms, confirmation links and the CRM API.

`GET /s/{account}/{list}` shows the account's branded form (consent text and version from
config, a CSRF token, a honeypot field); `POST` there starts the double opt-in. A post without a
valid CSRF token (the embeddable snippet from `GET /s/{account}/{list}/snippet`, or a stale
page) gets the form back, filled in, to submit from the relay's own page. `GET /c/{token}` shows
a Confirm button and changes nothing (link scanners fetch links); `POST /c/{token}` confirms.
`POST /api/v1/subscriptions` and `GET /api/v1/subscriptions/{address}` serve CRMs with the
account's API key (`Authorization: Bearer ACCOUNT_ID:SECRET`, the secret hashed in
`accounts[].api_key_hash`); errors are JSON with a stable `error` code.

Pages are Jinja2 templates (`relay/web/pages/`) rendered with autoescaping: every value from a
request, a brand or a list is escaped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relay.consent.subscriptions import Requester, Subscriptions
from relay.errors import StoreError
from relay.logging import get_logger
from relay.mail.branding import form_strings
from relay.metrics import SUBSCRIPTIONS
from relay.web.api import api_account, closed_refusal
from relay.web.state import client_ip, json_error, read_form, runtime_of

if TYPE_CHECKING:
    from relay.config import Config
    from relay.configaccounts import Account, MailingList
    from relay.storage.records import Consent, Subscription

log = get_logger(__name__)
SUBSCRIPTIONS_KEY = web.AppKey("subscriptions", object)
_ENV = Environment(
    loader=PackageLoader("relay.web", "pages"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)


class ApiSubscribe(BaseModel):
    """The body of `POST /api/v1/subscriptions`: the subscriber and the form they used."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(max_length=254)
    list: str = Field(max_length=64)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1000)
    source_url: str | None = Field(default=None, max_length=1000)


def _flow(request: web.Request) -> Subscriptions:
    flow: Subscriptions = request.app[SUBSCRIPTIONS_KEY]  # type: ignore[assignment]
    return flow


def page_headers(image_origin: str = "'none'") -> dict[str, str]:
    """The headers of every HTML page: no caching, no framing, nothing but its own form."""
    return {
        "Cache-Control": "no-store",
        "X-Robots-Tag": "noindex",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; img-src {image_origin};"
            " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    }


def _headers(account: Account | None) -> dict[str, str]:
    logo = account.brand.logo_url if account else None
    parts = urlsplit(logo) if logo else None
    return page_headers(f"{parts.scheme}://{parts.netloc}") if parts else page_headers()


def page(
    template: str,
    account: Account | None,
    status: int,
    *,
    title: str,
    **values: Any,  # noqa: ANN401 - template values
) -> web.Response:
    """An HTML page from `template` (pages/), in the account's brand or the relay's own."""
    brand = account.brand if account else None
    language = brand.language if brand else "en"
    body = _ENV.get_template(template).render(
        language=language,
        title=title,
        color=brand.color if brand else "#1a56db",
        logo_url=brand.logo_url if brand else None,
        brand_name=brand.name if brand else "optin-relay",
        postal_address=brand.postal_address if brand else "",
        words=form_strings(language),
        **values,
    )
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=_headers(account),
    )


def _message(account: Account | None, status: int, kind: str, **values: str) -> web.Response:
    words = form_strings(account.brand.language if account else "en")
    return page(
        "base.html",
        account,
        status,
        title=words[f"{kind}_title"].format(**values),
        text=words[f"{kind}_text"].format(**values),
    )


async def _form_target(request: web.Request) -> tuple[Account, MailingList]:
    """The account and list a form URL names; a terminated account's forms are gone (404)."""
    config = runtime_of(request).config
    account = config.account(request.match_info["account"])
    mailing_list = account.mailing_list(request.match_info["list"]) if account else None
    if account is None or mailing_list is None:
        raise web.HTTPNotFound(text="no such subscription form")
    try:
        closed = await _flow(request).closed(account.id)
    except StoreError as exc:
        raise web.HTTPServiceUnavailable(text="try again in a moment") from exc
    if closed:
        raise web.HTTPNotFound(text="no such subscription form")
    return account, mailing_list


def _form(
    request: web.Request,
    account: Account,
    mailing_list: MailingList,
    status: int,
    *,
    email: str = "",
    errors: tuple[str, ...] = (),
    note: str = "",
    source_url: str = "",
) -> web.Response:
    runtime = runtime_of(request)
    words = form_strings(account.brand.language)
    values = {"list": mailing_list.name, "name": account.brand.name}
    return page(
        "subscribe.html",
        account,
        status,
        title=words["subscribe_title"].format(**values),
        intro=words["subscribe_intro"].format(**values),
        note=note,
        errors=errors,
        action=f"/s/{account.id}/{mailing_list.id}",
        form_token=runtime.tokens.form_token(account.id, mailing_list.id),
        source_url=source_url,
        email=email,
        consent_text=mailing_list.consent_text,
        consent_version=mailing_list.consent_version,
    )


def _hosted_url(config: Config, account: Account, mailing_list: MailingList) -> str:
    return f"{config.web.public_url}/s/{account.id}/{mailing_list.id}"


async def form_page(request: web.Request) -> web.Response:
    """The branded subscription form."""
    account, mailing_list = await _form_target(request)
    source = request.headers.get("Referer", "")[:1000]
    return _form(request, account, mailing_list, 200, source_url=source)


async def snippet(request: web.Request) -> web.Response:
    """The HTML to paste into the account's own site; it posts to the hosted form."""
    account, mailing_list = await _form_target(request)
    config = runtime_of(request).config
    text = _ENV.get_template("snippet.html").render(
        action=_hosted_url(config, account, mailing_list),
        list_name=mailing_list.name,
        brand_name=account.brand.name,
        words=form_strings(account.brand.language),
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def form_post(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per outcome
    """Start the double opt-in; the answer is the same for every well-formed request."""
    account, mailing_list = await _form_target(request)
    runtime = runtime_of(request)
    config = runtime.config
    words = form_strings(account.brand.language)
    data = await read_form(request)
    if data is None:  # not a form: show a fresh one
        return _form(request, account, mailing_list, 400, note=words["resubmit_note"])
    email = str(data.get("email", ""))[:254].strip()
    source = str(data.get("source_url", "") or request.headers.get("Referer", ""))[:1000]
    token = str(data.get("form_token", ""))
    max_age = config.subscriptions.form_max_age
    if not runtime.tokens.verify_form_token(token, account.id, mailing_list.id, max_age):
        # The snippet on the account's site, or a stale page: ask again on our own page.
        return _form(
            request,
            account,
            mailing_list,
            200,
            email=email,
            note=words["resubmit_note"],
            source_url=source,
        )
    ip = client_ip(request, config)
    if data.get("website"):
        log.info("subscription_dropped", reason="honeypot", client_ip=ip, account_id=account.id)
        SUBSCRIPTIONS.labels("subscribe", "dropped").inc()
        return _sent(account, config)
    if data.get("consent") != "yes":
        errors = (words["consent_required"],)
        return _form(
            request, account, mailing_list, 400, email=email, errors=errors, source_url=source
        )
    requester = Requester(
        ip, request.headers.get("User-Agent"), source or _hosted_url(config, account, mailing_list)
    )
    try:
        answer = await _flow(request).subscribe(account, mailing_list, email, requester)
    except StoreError as exc:
        log.error("subscription_failed", step="subscribe", error=str(exc))
        return _message(account, 503, "unavailable")
    if answer == "invalid_address":
        errors = (words["invalid_address"],)
        return _form(
            request, account, mailing_list, 400, email=email, errors=errors, source_url=source
        )
    if answer == "rate_limited":
        return _message(account, 429, "limited")
    return _sent(account, config)


def _sent(account: Account, config: Config) -> web.Response:
    days = str(round(config.subscriptions.pending_ttl / 86400))
    return _message(account, 200, "sent", days=days)


async def _link(
    request: web.Request,
) -> tuple[Subscription | None, Account | None, MailingList | None]:
    item = await _flow(request).pending(request.match_info["token"])
    if item is None:
        return None, None, None
    account = runtime_of(request).config.account(item.account_id)
    mailing_list = account.mailing_list(item.list_id) if account else None
    return item, account, mailing_list


def _link_values(
    item: Subscription, account: Account, mailing_list: MailingList | None
) -> dict[str, str]:
    return {
        "address": item.address,
        "list": mailing_list.name if mailing_list else item.list_id,
        "name": account.brand.name,
    }


async def confirm_page(request: web.Request) -> web.Response:
    """The confirmation page: a button, and nothing changed."""
    try:
        item, account, mailing_list = await _link(request)
    except StoreError:
        return _message(None, 503, "unavailable")
    if item is None or account is None:
        return _message(account, 400, "invalid")
    values = _link_values(item, account, mailing_list)
    if item.status == "confirmed":
        return _message(account, 200, "confirmed", **values)
    words = form_strings(account.brand.language)
    return page(
        "confirm.html",
        account,
        200,
        title=words["confirm_title"].format(**values),
        text=words["confirm_text"].format(**values),
        action=f"/c/{request.match_info['token']}",
    )


async def confirm_post(request: web.Request) -> web.Response:
    """Confirm: the opt-in record is written with both steps' evidence."""
    config = runtime_of(request).config
    try:
        result, item = await _flow(request).confirm(
            request.match_info["token"],
            ip=client_ip(request, config),
            user_agent=request.headers.get("User-Agent"),
        )
    except StoreError as exc:
        log.error("subscription_failed", step="confirm", error=str(exc))
        return _message(None, 503, "unavailable")
    if result == "rate_limited":
        return _message(None, 429, "limited")
    if item is None:
        return _message(None, 400, "invalid")
    account = config.account(item.account_id)
    if account is None:
        return _message(None, 400, "invalid")
    values = _link_values(item, account, account.mailing_list(item.list_id))
    return _message(account, 200, "confirmed", **values)


# --- the API for CRMs ---


async def api_subscribe(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per error
    """Start the double opt-in for a subscriber the CRM collected."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    try:
        body = ApiSubscribe.model_validate(json.loads(await request.text()))
    except ValidationError as exc:  # a ValueError too: it must come first
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return json_error(400, "invalid_request", problems)
    except (ValueError, LookupError):  # not JSON, not in its charset, or an unknown charset
        return json_error(400, "invalid_json", "the body must be a JSON object")
    mailing_list = account.mailing_list(body.list)
    if mailing_list is None:
        return json_error(404, "unknown_list", f"account {account.id} has no list {body.list!r}")
    refusal = await closed_refusal(request, account)
    if refusal is not None:
        return refusal
    requester = Requester(
        body.ip, body.user_agent, body.source_url or f"api:{account.id}/{mailing_list.id}"
    )
    try:
        answer = await _flow(request).subscribe(
            account, mailing_list, body.address, requester, limit_ip=False
        )
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    if answer == "invalid_address":
        return json_error(422, "invalid_address", "not a valid email address")
    return web.json_response({"status": "pending_confirmation"}, status=202)


def _record(record: Consent) -> dict[str, object]:
    return {
        "list": record.list_id,
        "method": record.method,
        "subscribed_at": record.subscribed_at,
        "confirmed_at": record.confirmed_at,
        "source": record.source,
        "ip": record.ip,
        "user_agent": record.user_agent,
        "consent_text_version": record.consent_text_version,
        "evidence": record.evidence,
        "withdrawn_at": record.withdrawn_at,
        "withdrawn_how": record.withdrawn_how,
    }


async def api_show(request: web.Request) -> web.Response:
    """The account's opt-in records, their history and pending subscriptions for one address."""
    account = await api_account(request)
    if isinstance(account, web.Response):
        return account
    address = request.match_info["address"].strip().lower()
    store = _flow(request).store
    try:
        records = await store.consents(account_id=account.id, address=address)
        history = await store.consent_history(account.id, address)
        pending = await store.subscriptions_of(account.id, address)
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    if not records and not history and not pending:
        return json_error(404, "not_found", "no opt-in record or subscription for this address")
    return web.json_response(
        {
            "address": address,
            "records": [_record(r) for r in records],
            "history": [_record(r) for r in history],
            "subscriptions": [
                {
                    "list": s.list_id,
                    "status": s.status,
                    "created_at": s.created_at,
                    "expires_at": s.expires_at,
                    "confirmed_at": s.confirmed_at,
                }
                for s in pending
            ],
        }
    )


def add_routes(app: web.Application, subscriptions: Subscriptions) -> None:
    """Register the form, confirmation and API routes."""
    app[SUBSCRIPTIONS_KEY] = subscriptions
    app.router.add_get("/s/{account}/{list}", form_page)
    app.router.add_post("/s/{account}/{list}", form_post)
    app.router.add_get("/s/{account}/{list}/snippet", snippet)
    app.router.add_get("/c/{token}", confirm_page)
    app.router.add_post("/c/{token}", confirm_post)
    app.router.add_post("/api/v1/subscriptions", api_subscribe)
    app.router.add_get("/api/v1/subscriptions/{address}", api_show)
