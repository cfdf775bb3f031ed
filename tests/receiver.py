"""A CRM's webhook endpoint on a loopback port, and relays that push their events to it.

Shared by several test modules (test modules never import each other).
"""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web
from conftest import config_data, eventually, free_port
from standardwebhooks.webhooks import Webhook as Verifier

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()


class Receiver:
    """A CRM's webhook endpoint: records what it gets, answers `status`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[tuple[dict[str, str], str]] = []
        self.status = 200
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.received.append((dict(request.headers), body))
        return web.Response(status=self.status, text="ok")

    def events(self, secret: str = SECRET) -> list[dict]:
        """Every request's event, each verified with `secret` (raises if one does not verify)."""
        verifier = Verifier(secret)
        return [verifier.verify(body, headers) for headers, body in self.received]


def webhook_data(store_url, upstream, tls_files, url, **settings):
    data = config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    data["webhooks"] = {"allow_private": True, "poll_interval": 0.05, **settings}
    data["accounts"][0]["webhooks"] = [{"url": url, "secret": [SECRET, OLD_SECRET]}]
    return data


async def started(start_relay, data):
    """A relay whose endpoint has taken its place in the feed (before any mail is sent)."""
    relay = await start_relay(data)
    await eventually(lambda: relay.webhooks is not None)
    for _ in range(200):
        if await relay.store.webhook_states():
            break
        await asyncio.sleep(0.02)
    return relay
