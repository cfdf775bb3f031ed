"""Shared fixtures: real servers on 127.0.0.1 ephemeral ports, real SQLite files, real PostgreSQL.

PostgreSQL tests use `OPTIN_RELAY_TEST_PG` (default: the local server's `test` database), each
in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiosmtplib
import asyncpg
import pytest
import structlog
import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session
from prometheus_client.parser import text_string_to_metric_families

from relay.app import Relay
from relay.clock import ManualClock
from relay.config import Config, parse_config
from relay.logging import configure
from relay.passwords import hash_password
from relay.sink import start_sink
from relay.storage import open_store
from relay.storage.base import Store
from relay.tlsutil import write_self_signed

PG_URL = os.environ.get("OPTIN_RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-Passw0rd!"
PASSWORD_HASH = hash_password(PASSWORD)
TOKEN_KEY = "test-token-key-0123456789-abcdefghijklmnop"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every asynchronous test runs on uvloop, the event loop `serve` uses by default.

    (`serve --event-loop asyncio` is covered by the subprocess tests that pass it.)
    """
    del config, item
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _json_logs() -> Iterator[io.StringIO]:
    """Every test logs through the real configuration into a buffer it can read."""
    buffer = io.StringIO()
    configure(level="debug", stream=buffer)
    yield buffer
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def log_lines(_json_logs: io.StringIO) -> Callable[[], list[dict[str, Any]]]:
    """The JSON log events emitted so far."""

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in _json_logs.getvalue().splitlines() if line.strip()]

    return read


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, made once per run."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    write_self_signed(cert, key, ["relay.test.example", "localhost"])
    return cert, key


async def _pg_schema_url() -> str:
    schema = "t_" + secrets.token_hex(6)
    return f"{PG_URL}?schema={schema}"


# Relays started by `start_relay` and not stopped yet. pytest tears fixtures down in the reverse
# order of setup, so a test that asks for `start_relay` before the fixture holding its database
# would see the schema dropped under a relay still polling it (a deadlock on PostgreSQL): the
# database fixtures stop these first.
_LIVE_RELAYS: list[Relay] = []


async def _stop_live_relays() -> None:
    while _LIVE_RELAYS:
        await _LIVE_RELAYS.pop().stop(grace=1)


async def drop_pg_schema(url: str) -> None:
    """Drop the schema a test URL names, once no relay of this test uses it any more."""
    await _stop_live_relays()
    schema = url.rsplit("schema=", 1)[1]
    con = await asyncpg.connect(PG_URL)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await con.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/relay.db"
        await _stop_live_relays()
        return
    url = await _pg_schema_url()
    yield url
    await drop_pg_schema(url)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema."""
    url = await _pg_schema_url()
    yield url
    await drop_pg_schema(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file."""
    return f"sqlite:///{tmp_path}/relay.db"


@functools.cache
def dkim_keys() -> list[dict[str, str]]:
    """Keys for the test domains, made once per run: RSA and Ed25519 for acme, RSA otherwise."""
    from relay.mail.signing import generate_key

    folder = Path(tempfile.mkdtemp(prefix="optin-relay-dkim-"))
    keys = []
    for domain, selector, algorithm in (
        ("acme.example", "r2027", "rsa-sha256"),
        ("acme.example", "e2027", "ed25519-sha256"),
        ("globex.example", "r2027", "rsa-sha256"),
        ("relay.test.example", "r2027", "rsa-sha256"),
    ):
        path = folder / f"{domain}.{selector}.pem"
        path.write_bytes(generate_key(algorithm))  # type: ignore[arg-type]
        keys.append(
            {
                "domain": domain,
                "selector": selector,
                "private_key": str(path),
                "algorithm": algorithm,
            }
        )
    return keys


def dkim_dns(config: Config) -> Callable[..., bytes | None]:
    """A stand-in for DNS (the one thing tests may not reach): the configured public keys."""
    from relay.mail.signing import load_keys

    keys, _ = load_keys(config.dkim)
    records = {f"{key.dns_name}.".encode(): key.public_record.encode() for key in keys}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


def config_data(
    *,
    store_url: str,
    upstream_port: int,
    tls_files: tuple[Path, Path],
    listeners: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A complete configuration as YAML would give it, with two accounts."""
    cert, key = tls_files
    data: dict[str, Any] = {
        "hostname": "relay.test.example",
        "smtp": {
            "listeners": listeners or [{"address": "127.0.0.1:0", "tls": "starttls"}],
            "tls": {"certificate": str(cert), "private_key": str(key)},
            "max_recipients": 100,
        },
        "upstream": {"host": "127.0.0.1", "port": upstream_port, "tls": "none"},
        "delivery": {"retry_schedule": [60, 300], "jitter": 0, "poll_interval": 0.05},
        "storage": {"url": store_url},
        "web": {"listen": "127.0.0.1:0", "public_url": "https://relay.test.example"},
        "inbound": {"domain": "relay.test.example"},
        "tokens": {"keys": [TOKEN_KEY]},
        "dkim": dkim_keys(),
        "accounts": [
            {
                "id": "acme",
                "username": "acme-crm",
                "password_hash": PASSWORD_HASH,
                "from_domains": ["acme.example"],
                "contact": "abuse-desk@acme.example",
                "brand": {"name": "Acme News", "postal_address": "1 Acme Way, Springfield"},
            },
            {
                "id": "globex",
                "username": "globex",
                "password_hash": PASSWORD_HASH,
                "from_domains": ["globex.example"],
                "stream": "transactional",
                "brand": {"name": "Globex", "postal_address": "2 Globex Road", "language": "de"},
            },
        ],
    }
    for key_name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key_name), dict):
            data[key_name] = {**data[key_name], **value}
        else:
            data[key_name] = value
    return data


class CapturedMessage:
    """One recipient's copy as the test upstream received it."""

    def __init__(self, mail_from: str, rcpt: str, content: bytes) -> None:
        self.mail_from = mail_from
        self.rcpt = rcpt
        self.content = content

    @property
    def message(self) -> Message:
        return message_from_bytes(self.content)


class TestUpstream:
    """A real SMTP server on loopback that records what it gets and refuses what it is told to."""

    __test__ = False

    def __init__(self) -> None:
        self.messages: list[CapturedMessage] = []
        self.reject: dict[str, str] = {}  # recipient -> reply
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.reject:
            return self.reject[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        for rcpt in envelope.rcpt_tos:
            self.messages.append(
                CapturedMessage(envelope.mail_from, rcpt, envelope.original_content or b"")
            )
        return "250 2.0.0 Ok: captured"

    async def start(self, port: int = 0, **smtp_options: Any) -> int:
        self.server, self.port = await start_sink(self, "127.0.0.1", port, **smtp_options)
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    """A running test upstream."""
    up = TestUpstream()
    await up.start()
    yield up
    await up.stop()


def free_port() -> int:
    """A port nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clock() -> ManualClock:
    """Test time."""
    return ManualClock()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store on each backend (the `store_url` parameter)."""
    opened = open_store(store_url)
    await opened.open()
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture
async def start_relay(clock: ManualClock) -> AsyncIterator[Callable[..., Any]]:
    """Start relays in-process from config data; all are stopped at the end of the test."""

    async def start(data: dict[str, Any], **kwargs: Any) -> Relay:
        config: Config = parse_config(data)
        relay = Relay(config, clock=kwargs.pop("clock", clock), **kwargs)
        await relay.start()  # a start that fails has stopped what it started
        _LIVE_RELAYS.append(relay)
        return relay

    yield start
    await _stop_live_relays()


async def smtp_client(
    port: int, *, starttls: bool = True, login: tuple[str, str] | None = None
) -> aiosmtplib.SMTP:
    """A connected (and optionally authenticated) client to the relay."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=starttls, validate_certs=False, timeout=10
    )
    await client.connect()
    await client.ehlo()
    if login is not None:
        await client.login(*login)
    return client


def simple_message(
    sender: str = "news@acme.example", to: str = "alice@example.net", body: str = "Hello"
) -> bytes:
    """A minimal valid message."""
    return (
        f"From: Acme News <{sender}>\r\nTo: {to}\r\nSubject: Test\r\n"
        f"Message-ID: <{secrets.token_hex(6)}@acme.example>\r\n\r\n{body}\r\n"
    ).encode()


def assert_relayed_intact(relayed: bytes, sent: bytes) -> None:
    """The relayed copy holds the sent message.

    Every header field is there, and the body up to the footer the relay appends to marketing mail.
    """
    sent_header, sent_body = sent.split(b"\r\n\r\n", 1)
    header, body = relayed.split(b"\r\n\r\n", 1)
    for line in sent_header.split(b"\r\n"):
        assert line in header, line
    assert body.startswith(sent_body), body[:200]


async def eventually(
    check: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until `check()` holds (asynchronous outcomes, not timing assertions)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            msg = "condition not reached in time"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


T = TypeVar("T")


async def settles(read: Callable[[], Awaitable[T]], expected: T, *, timeout: float = 10.0) -> None:
    """Wait until the awaited `read()` returns `expected` (a state written asynchronously)."""
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        if time.monotonic() > deadline:
            msg = f"{value!r} never became {expected!r}"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


async def read_events(store: Store, count: int, account: str = "acme", **kwargs: Any) -> list[Any]:
    """The account's events, paged by 3, once `count` of them have shown.

    On PostgreSQL an event shows once every older transaction of the whole cluster has ended,
    so while other tests run the feed may lag a moment behind the writes; it never skips.
    """
    found: list[Any] = []
    after = None
    for _ in range(500):
        page = await store.events(account, after=after, limit=3, **kwargs)
        found += page
        if page:
            after = page[-1].cursor
        elif len(found) >= count:
            return found
        else:
            await asyncio.sleep(0.02)
    return found


async def scrape(web_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the relay's /metrics shows, by name and sorted labels."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{web_port}/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class RelayProcess:
    """`python -m relay serve` as a child process, its JSON log lines collected."""

    def __init__(
        self,
        config_path: Path,
        *args: str,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.args = args  # more `serve` options
        self.cwd = cwd  # `python -m relay` imports the relay package found here first
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.smtp_port = 0

    async def start(self, timeout: float = 30.0) -> int:
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--config",
            str(self.config_path),
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
        )
        started = asyncio.Event()

        async def read() -> None:
            assert self.proc is not None
            assert self.proc.stdout is not None
            async for raw in self.proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = {"event": "stderr", "text": raw.decode(errors="replace")}
                self.lines.append(event)
                if event.get("event") == "listener_started" and not self.smtp_port:
                    self.smtp_port = int(event["address"].rsplit(":", 1)[1])
                if event.get("event") == "relay_started":
                    started.set()

        self._reader = asyncio.create_task(read())
        ready = asyncio.ensure_future(started.wait())
        exited = asyncio.ensure_future(self.proc.wait())
        await asyncio.wait([ready, exited], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            self.kill()
            await self.wait()  # reaped: a child left behind keeps uvloop's loop from closing
            raise AssertionError(f"relay did not start: {self.lines}")
        exited.cancel()
        return self.smtp_port

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    async def terminate(self) -> int:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
        return await self.wait()
