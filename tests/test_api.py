"""The API for CRMs over real HTTP: suppressions, and the whole API against its OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import PASSWORD, PASSWORD_HASH, config_data, smtp_client

from relay.storage.records import Suppression

AUTH = {"Authorization": f"Bearer acme:{PASSWORD}"}


@pytest.fixture
def data(store_url, upstream, tls_files):
    data = config_data(
        store_url=store_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"auth_failure_limit": 1_000_000},  # schemathesis sends many unauthenticated requests
    )
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    data["accounts"][1]["api_key_hash"] = PASSWORD_HASH
    return data


async def call(relay, method, path, *, json=None, account="acme"):
    headers = {"Authorization": f"Bearer {account}:{PASSWORD}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://127.0.0.1:{relay.web_port}{path}", json=json, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_crm_manages_its_suppressions(start_relay, data, clock):
    """List its own, check any address (any spelling), add its own, remove only its own."""
    relay = await start_relay(data)
    now = clock.now()
    await relay.store.suppress(
        Suppression("gone@example.net", "acme", "unsubscribe", "one_click", now), actor="t"
    )
    await relay.store.suppress(Suppression("all@example.net", "*", "manual", "ops", now), actor="t")
    await relay.store.suppress(
        Suppression("theirs@example.net", "globex", "manual", "api", now), actor="t"
    )
    assert await call(
        relay, "POST", "/api/v1/suppressions", json={"address": "Mine@Example.NET"}
    ) == (
        201,
        {"address": "mine@example.net", "added": True},
    )
    status, body = await call(
        relay, "POST", "/api/v1/suppressions", json={"address": "mine@example.net"}
    )
    assert (status, body["added"]) == (200, False)
    pages, after = [], None
    for _ in range(3):  # two pages of one; the last one's `next` is null
        query = "?limit=1" + (f"&after={after}" if after else "")
        status, body = await call(relay, "GET", f"/api/v1/suppressions{query}")
        assert status == 200
        assert len(body["suppressions"]) == 1
        pages += body["suppressions"]
        after = body["next"]
        if after is None:
            break
    status, body = await call(relay, "GET", "/api/v1/suppressions?limit=2")
    assert (len(body["suppressions"]), body["next"]) == (2, None)
    assert [(s["address"], s["scope"], s["reason"]) for s in pages] == [
        ("gone@example.net", "account", "unsubscribe"),
        ("mine@example.net", "account", "manual"),
    ]  # never another account's, nor the global list (other tenants' recipients)
    status, body = await call(relay, "GET", "/api/v1/suppressions/all@example.net")
    assert (status, body["scope"]) == (200, "global")  # shown for an address the CRM names
    status, body = await call(relay, "GET", "/api/v1/suppressions/Gone+x@Example.net")
    assert (status, body["address"], body["reason"]) == (200, "gone@example.net", "unsubscribe")
    status, body = await call(relay, "GET", "/api/v1/suppressions/here@example.net")
    assert (status, body["error"]) == (404, "not_suppressed")
    status, body = await call(relay, "DELETE", "/api/v1/suppressions/gone@example.net")
    assert (status, body["error"]) == (403, "not_yours")
    status, body = await call(relay, "DELETE", "/api/v1/suppressions/theirs@example.net")
    assert (status, body["error"]) == (404, "not_suppressed")
    assert await call(relay, "DELETE", "/api/v1/suppressions/mine@example.net") == (
        200,
        {"address": "mine@example.net", "removed": True},
    )
    assert await relay.store.suppressed("mine@example.net", "acme") is None
    assert await relay.store.suppressed("gone@example.net", "acme") is not None
    for bad, code in [({"address": "no-at-sign"}, 422), ({"email": "x@y"}, 400), ([], 400)]:
        status, body = await call(relay, "POST", "/api/v1/suppressions", json=bad)
        assert status == code, (bad, body)


async def test_the_api_keeps_its_openapi_document(start_relay, data):
    """schemathesis, against the live server: every operation, every documented status code.

    Generated inputs (valid and not), with the account's key and without: each answer must be
    documented, match its schema, and never be a 500. The events feed runs without the check
    that every schema-valid request succeeds: a cursor is valid only if the relay issued it
    (`after=99999` past the feed is a 400 `invalid_cursor`), which no schema can say.
    """
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/api/v1/openapi.json"
    feed = ["--include-operation-id", "listEvents", "--exclude-checks", "positive_data_acceptance"]
    tested = await asyncio.gather(
        schemathesis(url, ["--exclude-operation-id", "listEvents"]), schemathesis(url, feed)
    )
    assert tested == [7, 1]


async def schemathesis(url: str, options: list[str]) -> int:
    """Run `st run` with every check (less what `options` exclude); how many operations."""
    st = Path(sys.executable).with_name("st")
    # A fixed seed keeps CI repeatable; OPTIN_RELAY_API_SEED=random explores anew each run
    # (what it finds becomes a test of its own, as the line-break and cursor cases did).
    chosen = os.environ.get("OPTIN_RELAY_API_SEED", "20261130")
    seed = [] if chosen == "random" else ["--seed", chosen]
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        url,
        "--header",
        f"Authorization: {AUTH['Authorization']}",
        "--checks",
        "all",
        *options,
        "--max-examples",
        "40",
        *seed,
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[text.find("FAILURES") :][:6000]
    tested = re.search(r"Tested: (\d+)", text)
    assert tested is not None, text[-2000:]
    return int(tested[1])


async def test_a_suppression_cannot_be_evaded_by_re_spelling(start_relay, data):
    """`Foo.Bar+x@Example.ORG` is refused at RCPT when `foo.bar@example.org` is suppressed."""
    relay = await start_relay(data)
    status, _ = await call(
        relay, "POST", "/api/v1/suppressions", json={"address": "foo.bar@example.org"}
    )
    assert status == 201
    client = await smtp_client(relay.smtp_ports[0], login=("acme-crm", PASSWORD))
    await client.mail("news@acme.example")
    for spelling in ("Foo.Bar+x@Example.ORG", "FOO.BAR@example.org", "foo.bar+news@EXAMPLE.org"):
        response = await client.execute_command(f"RCPT TO:<{spelling}>".encode())
        assert (response.code, response.message[:5]) == (550, "5.7.1"), spelling
    response = await client.execute_command(b"RCPT TO:<foobar@example.org>")
    assert response.code == 250  # not Gmail: the dots count
    await client.quit()


async def test_simultaneous_key_guesses_cannot_race_the_throttle(
    start_relay, sqlite_url, upstream, tls_files, log_lines
):
    """30 wrong keys and the right one at the same moment: 5 checked, the rest 429.

    As SMTP AUTH (hardening finding 3): one check at a time per address, each seeing the
    failures before it.
    """
    data = config_data(
        store_url=sqlite_url,
        upstream_port=upstream.port,
        tls_files=tls_files,
        smtp={"auth_failure_limit": 5, "auth_failure_window": 600},
    )
    data["accounts"][0]["api_key_hash"] = PASSWORD_HASH
    relay = await start_relay(data)
    url = f"http://127.0.0.1:{relay.web_port}/api/v1/events"
    keys = [f"guess-{n}" for n in range(30)] + [PASSWORD]
    async with aiohttp.ClientSession() as http:

        async def attempt(key: str) -> int:
            headers = {"Authorization": f"Bearer acme:{key}"}
            async with http.get(url, headers=headers) as response:
                return response.status

        statuses = await asyncio.gather(*(attempt(key) for key in keys))
    assert statuses.count(401) == 5
    assert statuses.count(429) == 26  # the right key among them: the address is blocked
    assert len([e for e in log_lines() if e["event"] == "api_auth_failed"]) == 5


async def test_non_ascii_digits_are_refused_not_a_crash(start_relay, data):
    """'²' is a digit to str.isdigit but not to int(): a 400, never a 500."""
    relay = await start_relay(data)
    for path in (
        "/api/v1/events?limit=%C2%B2",
        "/api/v1/suppressions?limit=%C2%B2",
        "/api/v1/events?after=%C2%B2",
    ):
        status, body = await call(relay, "GET", path)
        assert status in (200, 400), (path, status, body)
        assert status == 400 or body["events"] == []
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{relay.web_port}/s/acme/newsletter", data={"token": "²"}) as r,
    ):
        assert r.status < 500


async def test_an_address_with_a_line_break_gets_a_json_answer(start_relay, data):
    """The route takes any path segment (a line break too), so the API answers, in JSON."""
    relay = await start_relay(data)
    for method in ("GET", "DELETE"):
        status, body = await call(relay, method, "/api/v1/suppressions/a%0Ab@example.net")
        assert (status, body["error"]) == (404, "not_suppressed"), body  # JSON, not the router


@pytest.mark.parametrize("state", ["terminated", "suspended"])
async def test_a_closed_account_reads_but_writes_nothing(start_relay, data, clock, state):
    """Terminated: events and suppressions are read, nothing added or lifted (403).

    Suspended: the key works in full (the CRM answers the suspension through it).
    """
    relay = await start_relay(data)
    assert await call(relay, "POST", "/api/v1/suppressions", json={"address": "a@example.net"}) == (
        201,
        {"address": "a@example.net", "added": True},
    )
    await relay.store.set_account_state("acme", state, reason="test", actor="test", now=clock.now())
    reads = [
        await call(relay, "GET", "/api/v1/events"),
        await call(relay, "GET", "/api/v1/suppressions"),
        await call(relay, "GET", "/api/v1/suppressions/a@example.net"),
    ]
    assert [status for status, _ in reads] == [200, 200, 200]
    assert [s["address"] for s in reads[1][1]["suppressions"]] == ["a@example.net"]
    writes = [  # subscriptions: test_terminated_account_takes_no_subscriptions
        await call(relay, "POST", "/api/v1/suppressions", json={"address": "b@example.net"}),
        await call(relay, "DELETE", "/api/v1/suppressions/a@example.net"),
    ]
    if state == "terminated":
        assert [(status, body["error"]) for status, body in writes] == [(403, "account_closed")] * 2
        assert await relay.store.suppressed("b@example.net", "acme") is None
        assert await relay.store.suppressed("a@example.net", "acme") is not None
    else:
        assert [status for status, _ in writes] == [201, 200]
