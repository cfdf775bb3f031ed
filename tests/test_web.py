"""The HTTP server: /healthz follows the store, /metrics counts decisions."""

from __future__ import annotations

import aiohttp
from conftest import PASSWORD, config_data, eventually, simple_message, smtp_client


async def test_healthz_and_metrics(start_relay, store_url, tls_files, upstream):
    """/healthz answers 200 while the store answers and 503 once it is gone; /metrics counts."""
    relay = await start_relay(
        config_data(store_url=store_url, upstream_port=upstream.port, tls_files=tls_files)
    )
    base = f"http://127.0.0.1:{relay.web_port}"
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.sendmail("news@acme.example", ["a@example.net"], simple_message())
    await client.quit()
    await eventually(lambda: len(upstream.messages) == 1)
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
