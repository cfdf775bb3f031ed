"""The HTTP server: /healthz follows the store, /metrics counts decisions."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from conftest import PASSWORD, PASSWORD_HASH, config_data, eventually, simple_message, smtp_client

from relay.web.state import crash_barrier


async def test_healthz_and_metrics(start_relay, store_url, tls_files, upstream):
    """/healthz answers 200 while the store answers and 503 once it is gone; /metrics counts."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    base = f"http://127.0.0.1:{relay.web_port}"
    assert crash_barrier in relay._web.app.middlewares  # what the next test checks guards this app
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
    # The upstream has the copy a moment before the relay records the delivery: wait for that.
    async with asyncio.timeout(10):
        while (await relay.store.counts()).get("pending"):
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
            assert response.status == 200
            assert "optin_relay_messages_accepted_total" in text
            assert 'optin_relay_deliveries_total{outcome="delivered"}' in text
            assert "optin_relay_spool_pending_recipients 0.0" in text  # read from either backend
        await relay.store.close()
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 503


async def test_a_crashing_handler_answers_500_and_logs_one_json_event(log_lines):
    """The app's middleware: an unexpected exception is a plain 500; HTTP errors pass through."""

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("kaput")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound

    app = web.Application(middlewares=[crash_barrier])
    app.router.add_get("/crash", crash)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/crash") as response:
                assert response.status == 500
                assert await response.text() == "Internal error, please try again later.\n"
            async with http.get(f"http://{host}:{port}/missing") as response:
                assert response.status == 404
    finally:
        await runner.cleanup()
    [event] = [e for e in log_lines() if e["event"] == "http_handler_failed"]
    assert (event["method"], event["path"], event["level"]) == ("GET", "/crash", "error")
    assert "RuntimeError: kaput" in event["exception"]


async def test_malformed_http_request_is_a_400_and_a_warning(
    start_relay, sqlite_url, tls_files, upstream, log_lines
):
    """A request line past aiohttp's limit gets 400; its log line is a JSON warning, no error."""
    relay = await start_relay(
        config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.web_port)
    writer.write(b"GET /s/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.split()[1] == b"400"
    await eventually(lambda: any(e["event"] == "library_log" for e in log_lines()))
    [logged] = [e for e in log_lines() if e["event"] == "library_log"]
    assert (logged["logger"], logged["level"]) == ("aiohttp.server", "warning")
    assert "LineTooLong" in logged["exception"]
    assert not [e for e in log_lines() if e["level"] == "error"]


async def test_metrics_are_for_this_machine_or_the_admin_token(
    start_relay, sqlite_url, tls_files, upstream
):
    """A client beyond the relay's proxy gets /metrics only with the admin bearer token.

    Finding 7: /metrics was served to anyone who could reach `web.listen`.
    """
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["web"] = {**data["web"], "trusted_proxies": ["127.0.0.1/32"]}
    base_data = {**data, "web": dict(data["web"])}
    outside = {"X-Forwarded-For": "203.0.113.7"}
    relay = await start_relay(base_data)
    url = f"http://127.0.0.1:{relay.web_port}/metrics"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200  # this machine
        async with http.get(url, headers=outside) as response:
            assert response.status == 404  # no admin token configured: nothing to offer
    data["web"]["admin_token_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/metrics"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=outside) as response:
            assert response.status == 401
            assert "optin_relay" not in await response.text()
        token = {**outside, "Authorization": f"Bearer {PASSWORD}"}
        async with http.get(url, headers=token) as response:
            assert response.status == 200
            assert "optin_relay_messages_accepted_total" in await response.text()
