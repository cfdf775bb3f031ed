"""Complaint and bounce intake per second through the relay's own SMTP addresses, in one run.

Starts the relay (`python -m relay serve`, upstream Postfix's `smtp-sink`), spools N messages
of one recipient each, then mails N ARF complaint reports to fbl@ (each about one copy, found by
its trace header: suppression, case, notice spooled) and N DSNs to the copies' bounce+TOKEN@
addresses (hard bounces: suppression). For comparison the same sessions submit N ordinary
messages of the same size. Prints each rate and the ratios.

    .venv/bin/python bench/feedback_intake.py [--messages 1000] [--sessions 8]
        [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import yaml
from benchlib import free_port, sink_command, wait_port

from relay.clock import SystemClock
from relay.configfile import load_config
from relay.mail.signing import generate_key, write_key
from relay.passwords import hash_password
from relay.runtime import make_codec
from relay.storage import NewMessage, open_store
from relay.storage.records import new_message_id

ROOT = Path(__file__).resolve().parent.parent
INBOUND = "relay.bench.example"
DSN = (ROOT / "tests/fixtures/dsn/sisimai-rfc3464-01.eml").read_bytes()
COPY = (
    "From: Bench <news@bench.example>\r\nTo: {rcpt}\r\nSubject: Weekly\r\n"
    "Message-ID: <{n}@bench.example>\r\n\r\n" + "Hello, this is the newsletter.\r\n" * 40
)


def report(trace: str, n: int) -> bytes:
    enclosed = f"X-Optin-Trace: {trace}\r\n" + COPY.format(rcpt="redacted@isp.example", n=n)
    return (
        "From: fbl@isp.example\r\nTo: fbl@relay.bench.example\r\nSubject: complaint\r\n"
        f"Message-ID: <r{n}@isp.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type="feedback-report"; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: bench/1\r\nVersion: 1\r\n\r\n"
        f"--B\r\nContent-Type: message/rfc822\r\n\r\n{enclosed}\r\n--B--\r\n"
    ).encode()


def write_config(work: Path, url: str, ports: dict[str, int]) -> Path:
    keys = []
    for domain in ("bench.example", INBOUND):
        path = work / f"{domain}.pem"
        write_key(path, generate_key("rsa-sha256"))
        keys.append({"domain": domain, "selector": "b", "private_key": str(path)})
    config = {
        "hostname": INBOUND,
        "smtp": {
            "listeners": [
                {
                    "address": f"127.0.0.1:{ports['submit']}",
                    "tls": "none",
                    "trusted_account": "bench",
                },
                {"address": f"127.0.0.1:{ports['inbound']}", "tls": "none", "auth": "optional"},
            ],
            "max_connections_per_ip": 1000,
        },
        "upstream": {"host": "127.0.0.1", "port": ports["sink"], "tls": "none"},
        "storage": {"url": url},
        "web": {"listen": f"127.0.0.1:{ports['web']}", "public_url": "https://relay.bench.example"},
        "inbound": {"domain": INBOUND},
        "tokens": {"keys": ["bench-token-key-0123456789-abcdefghijklmnop"]},
        "dkim": keys,
        "accounts": [
            {
                "id": "bench",
                "username": "bench",
                "password_hash": hash_password("bench-password"),
                "from_domains": ["bench.example"],
                "contact": "desk@bench.example",
                "brand": {"name": "Bench", "postal_address": "1 Bench Road"},
            }
        ],
        "log_level": "warning",
    }
    path = work / "relay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def spool(url: str, count: int) -> list[int]:
    """N messages of one recipient each; the spooled recipients' ids."""
    store = open_store(url)
    await store.open()
    await store.migrate()
    ids = []
    for n in range(count):
        message = NewMessage(
            id=new_message_id(),
            account_id="bench",
            mail_from="news@bench.example",
            recipients=(f"r{n}@example.org",),
            content=COPY.format(rcpt=f"r{n}@example.org", n=n).encode(),
            received_at=time.time(),
        )
        await store.spool(message)
        ids += [s.recipient_id for s in await store.sent_in_message(message.id)]
    await store.close()
    return ids


async def send_all(port: int, jobs: list[tuple[str, str, bytes]], sessions: int) -> float:
    """Send (sender, recipient, content) jobs over `sessions` connections; return seconds."""
    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        while not queue.empty():
            sender, rcpt, content = queue.get_nowait()
            await client.sendmail(sender, [rcpt], content)
        await client.quit()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return time.monotonic() - started


async def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    url = args.storage or f"sqlite:///{work}/relay.db"
    ports = {name: free_port() for name in ("submit", "inbound", "sink", "web")}
    config_path = write_config(work, url, ports)
    ids = await spool(url, args.messages)
    tokens = make_codec(load_config(config_path), SystemClock())
    sink = subprocess.Popen(sink_command(ports["sink"]))
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(ports["inbound"])
        n = args.messages
        plain = [
            ("news@bench.example", f"p{i}@example.org", COPY.format(rcpt="x", n=i).encode())
            for i in range(n)
        ]
        complaints = [
            ("fbl@isp.example", f"fbl@{INBOUND}", report(tokens.trace(rid), i))
            for i, rid in enumerate(ids)
        ]
        bounces = [("", f"bounce+{tokens.trace(rid)}@{INBOUND}", DSN) for rid in ids]
        submit = await send_all(ports["submit"], plain, args.sessions)
        complain = await send_all(ports["inbound"], complaints, args.sessions)
        bounce = await send_all(ports["inbound"], bounces, args.sessions)
    finally:
        relay.terminate()
        sink.terminate()
        relay.wait(30)
        sink.wait(30)
    store = open_store(url)
    await store.open()
    opened = len(await store.cases(limit=n + 1))
    await store.close()
    if opened != n:
        raise SystemExit(f"expected {n} cases, found {opened}")
    return {
        "messages_per_s": n / submit,
        "complaints_per_s": n / complain,
        "bounces_per_s": n / bounce,
        "complaint_to_message_ratio": submit / complain,
        "bounce_to_message_ratio": submit / bounce,
        "cases_opened": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--storage", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="optin-bench-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
