"""What the HTTP handlers share.

The store, runtime, clock and throttle (kept on the aiohttp app), reading untrusted form bodies,
and the middleware that turns a handler's crash into a plain 500 and a JSON log event.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from aiohttp import BasicAuth, web

from relay.logging import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from multidict import MultiDictProxy

    from relay.accounts.credentials import Credentials
    from relay.clock import Clock
    from relay.config import Config
    from relay.runtime import Runtime
    from relay.smtp.throttle import FailureThrottle
    from relay.storage.base import Store

log = get_logger(__name__)
STORE_KEY = web.AppKey("store", object)
RUNTIME_KEY = web.AppKey("runtime", object)
CLOCK_KEY = web.AppKey("clock", object)
THROTTLE_KEY = web.AppKey("throttle", object)
CREDENTIALS_KEY = web.AppKey("credentials", object)


def share(
    app: web.Application,
    store: Store,
    runtime: Callable[[], Runtime],
    clock: Clock,
    throttle: FailureThrottle,
    *,
    credentials: Credentials,
) -> None:
    """Put the shared objects on `app`."""
    app[STORE_KEY] = store
    app[RUNTIME_KEY] = runtime
    app[CLOCK_KEY] = clock
    app[THROTTLE_KEY] = throttle
    app[CREDENTIALS_KEY] = credentials


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """A JSON error answer with a stable `error` code, for the API and the admin endpoint."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def store_of(request: web.Request) -> Store:
    """The store."""
    store: Store = request.app[STORE_KEY]  # type: ignore[assignment]
    return store


def runtime_of(request: web.Request) -> Runtime:
    """The runtime (config, tokens) in force now."""
    runtime: Callable[[], Runtime] = request.app[RUNTIME_KEY]  # type: ignore[assignment]
    return runtime()


def clock_of(request: web.Request) -> Clock:
    """The clock."""
    clock: Clock = request.app[CLOCK_KEY]  # type: ignore[assignment]
    return clock


def credentials_of(request: web.Request) -> Credentials:
    """The verifier of API keys and the admin token (shared with SMTP AUTH)."""
    credentials: Credentials = request.app[CREDENTIALS_KEY]  # type: ignore[assignment]
    return credentials


def throttle_of(request: web.Request) -> FailureThrottle:
    """The per-client throttle of failed credentials (admin token, API keys)."""
    throttle: FailureThrottle = request.app[THROTTLE_KEY]  # type: ignore[assignment]
    return throttle


async def read_form(
    request: web.Request,
) -> MultiDictProxy[str | bytes | bytearray | web.FileField] | None:
    """The request's form fields, or None when the body cannot be read as a form.

    Anything a client sends may be broken: a multipart body without its boundary or with a
    garbled part header, an unknown charset, bytes that are not in the charset named. A body
    over the size limit still raises 413 (HTTPRequestEntityTooLarge).
    """
    try:
        return await request.post()
    except (ValueError, LookupError, Warning):  # aiohttp warns of some broken parts
        return None


@web.middleware
async def crash_barrier(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A handler's unexpected exception becomes a plain 500 and one JSON log event."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return web.Response(status=500, text="Internal error, please try again later.\n")


def client_ip(request: web.Request, config: Config) -> str | None:
    """The client's address; behind a proxy in `web.trusted_proxies`, from X-Forwarded-For."""
    remote = request.remote
    trusted = config.web.trusted_proxies
    if remote is None or not trusted or not _in(remote, trusted):
        return remote
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return remote


def _in(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


async def admin_refusal(request: web.Request, *, browser: bool = False) -> web.Response | None:
    """None when the request carries the admin token, else the answer refusing it.

    The token comes as `Authorization: Bearer TOKEN`, or (for a browser) as the password of
    HTTP Basic authentication, any user name. 404 when no admin token is configured; failures
    count against the client's address. `browser`: the refusal asks for Basic authentication
    and says nothing else.
    """
    runtime = runtime_of(request)
    token_hash = runtime.config.web.admin_token_hash
    if token_hash is None:
        raise web.HTTPNotFound
    throttle = throttle_of(request)
    client = client_ip(request, runtime.config) or "unknown"
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            token = BasicAuth.decode(header).password
        except ValueError:
            token = ""
    elif scheme.lower() != "bearer":
        token = ""
    credentials = credentials_of(request)
    async with throttle.turn(client):  # simultaneous guesses cannot all pass the check first
        if throttle.blocked(client):
            return json_error(429, "throttled", "too many failed attempts, try again later")
        if token.strip() and await credentials.verify("admin", token_hash, token.strip()):
            return None
        throttle.record(client)
    log.warning("admin_auth_failed", client_ip=client, path=request.path)
    if browser:
        return web.Response(
            status=401,
            text="401 Unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="optin-relay admin", charset="UTF-8"'},
        )
    return json_error(
        401,
        "unauthorized",
        "a valid bearer token is required",
        **{"WWW-Authenticate": 'Bearer realm="optin-relay"'},
    )
