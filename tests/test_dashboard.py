"""The abuse desk's dashboard in headless Chromium: rates, charts, overdue cases, escaping, 401."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import aiohttp
from conftest import PASSWORD, PASSWORD_HASH, config_data

from relay.storage.records import Case, new_case_id

CHROMIUM = "/usr/bin/chromium"
INJECTION = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


async def seed(relay, now: float) -> str:
    """Acme past the complaint warning; globex halted; one case overdue, one not."""
    store = relay.store
    await store.add_stats(
        [
            ("acme", "delivered", now - 3 * 86400, 600),
            ("acme", "delivered", now - 3600, 400),
            ("acme", "complaint", now - 3600, 2),  # 0.2%: past the warning (0.1%)
            ("acme", "refused", now - 3600, 7),
            ("globex", "delivered", now - 3600, 50),
        ]
    )
    await store.set_account_state(
        "globex",
        "suspended",
        reason="broadcast_halted: 12000 > 10000",
        actor="policy:broadcast_halted",
        now=now - 600,
    )
    overdue = Case(
        new_case_id(), "acme", "ann@example.net", "Q1", "Q1", "fbl", "abuse", b"",
        "awaiting_proof", now - 9 * 86400, now - 2 * 86400, now - 9 * 86400,
    )  # fmt: skip
    pending = Case(
        new_case_id(), "acme", "bob@example.net", "Q2", "Q2", "fbl", "virus", b"",
        "open", now - 86400, now + 6 * 86400, now - 86400,
    )  # fmt: skip
    upheld = Case(
        new_case_id(), "acme", "cy@example.net", "Q3", "Q3", "fbl", "virus", b"",
        "upheld", now - 20 * 86400, now - 13 * 86400, now - 13 * 86400, fine_cents=5000,
    )  # fmt: skip
    assert await store.open_case(overdue)
    assert await store.open_case(pending)
    assert await store.open_case(upheld)
    return overdue.id


async def check_http(base: str) -> None:
    """Without the token: 401 and nothing else; the chart is an SVG without script."""
    async with aiohttp.ClientSession() as http:
        wrong = {"Authorization": aiohttp.encode_basic_auth("desk", "wrong")}
        for headers in ({}, wrong):
            async with http.get(f"{base}/admin/dashboard", headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
                body = await response.text()
                assert "acme" not in body
                assert body == "401 Unauthorized\n"
        async with http.get(f"{base}/admin/dashboard/chart/acme.svg") as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {PASSWORD}"}
        async with http.get(f"{base}/admin/dashboard/chart/acme.svg", headers=bearer) as response:
            assert response.status == 200
            assert response.content_type == "image/svg+xml"
            svg = await response.text()
    assert "<script" not in svg
    assert "complaint %" in svg
    assert "complaint warn" in svg
    # today: 2 complaints of 400 delivered, 0.5 %, past the 0.1 % warning line
    assert 'class="value">0.50<' in svg


async def test_dashboard_in_headless_chromium(
    start_relay, sqlite_url, tls_files, upstream, tmp_path
):
    """What the abuse desk sees; screenshots of each page; escaping; nothing without the token."""
    from playwright.async_api import async_playwright

    assert shutil.which(CHROMIUM), "Debian's chromium is needed (.ci/run installs it)"
    shots = Path(os.environ.get("OPTIN_RELAY_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    data = config_data(store_url=sqlite_url, upstream_port=upstream.port, tls_files=tls_files)
    data["web"]["admin_token_hash"] = PASSWORD_HASH
    data["accounts"][1]["brand"]["name"] = f"Globex {INJECTION}"
    relay = await start_relay(data)
    now = relay.clock.now()
    overdue = await seed(relay, now)
    base = f"http://127.0.0.1:{relay.web_port}"

    await check_http(base)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = await browser.new_context(
            viewport={"width": 1400, "height": 900},
            http_credentials={"username": "desk", "password": PASSWORD},
        )
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await page.goto(f"{base}/admin/dashboard")
        await page.wait_for_load_state("networkidle")
        await page.screenshot(path=shots / "5-dashboard.png", full_page=True)

        acme = page.locator("#account-acme")
        complaint_cell = acme.locator("td").nth(2 + 6)  # account, standing, six counts
        assert "0.200%" in await complaint_cell.inner_text()
        assert "warn" in await complaint_cell.inner_text()
        assert await complaint_cell.get_attribute("class") == "warn"
        assert "50.00 USD" in await acme.inner_text()  # the upheld virus case's fine
        rules = acme.locator("td.readiness")
        # never checked in DNS; the test upstream takes no TLS; 0.2 % complaints this week
        assert await rules.get_attribute("class") == "readiness not-ready"
        assert (await rules.inner_text()).splitlines() == [
            "not ready",
            "authentication: unknown",
            "complaint_rate: warning",
            "tls_to_upstream: failing",
        ]
        assert await rules.locator(".rule-failing").get_attribute("title") == "upstream.tls: none"
        chart_loaded = await acme.locator("img").evaluate("img => img.naturalWidth > 0")
        assert chart_loaded
        globex = page.locator("#account-globex")
        assert "suspended" in await globex.inner_text()
        assert INJECTION in await globex.inner_text()  # shown as text, not markup
        assert "<script>alert(1)</script>" not in await page.content()
        assert dialogs == []
        overdue_row = page.locator(f"#case-{overdue}")
        assert await overdue_row.get_attribute("class") == "overdue"
        assert "overdue" in await overdue_row.inner_text()
        assert await page.locator("#cases tr.overdue").count() == 1
        assert "broadcast_halted" in await page.locator("#halts").inner_text()
        assert "recipients pending" in await page.locator("#backlog").inner_text()

        await page.goto(f"{base}/admin/dashboard/chart/acme.svg")
        await page.screenshot(path=shots / "6-dashboard-chart.png")
        await browser.close()
    for name in ("5-dashboard", "6-dashboard-chart"):
        assert (shots / f"{name}.png").stat().st_size > 1000
