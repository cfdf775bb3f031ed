"""Nothing answered 250 is lost: SIGKILL the relay at random moments under load, count copies.

A bounded client (aiosmtplib, `--connections` sessions on a trusted loopback listener) sends
`--messages` messages, each with its own Message-ID, and notes every one the relay answered
250. Meanwhile the relay is killed with SIGKILL `--kills` times at random moments and started
again on the same store. Its upstream is the relay's own capture sink (`optin-relay sink`),
which writes every copy it receives to a folder. At the end every acknowledged message must be
there. Copies delivered twice are counted: a kill between the upstream's 250 and the relay
recording it (at-least-once), or a message the client sent again because the relay died after
committing it and before answering 250.

    .venv/bin/python bench/sigkill_load.py [--messages 10000] [--kills 100] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiosmtplib
from benchlib import free_port, relay_config, seed_store, start_relay, wait_port

retried: set[int] = set()  # messages the client had to send more than once
refused: set[int] = set()  # messages refused for good (there should be none)

_MESSAGE_ID = re.compile(
    rb"^Message-ID: <(\d+)@load\.bench\.example>", re.MULTILINE | re.IGNORECASE
)


def message(n: int) -> bytes:
    """Message number `n`."""
    return (
        f"From: news@bench.example\r\nTo: reader@example.net\r\nSubject: load {n}\r\n"
        f"Message-ID: <{n}@load.bench.example>\r\n\r\nMessage number {n}.\r\n"
    ).encode()


async def load(port: int, messages: int, connections: int, acked: set[int]) -> None:
    """Send every message until it is answered 250, as a client does after a broken session.

    A message the relay committed but could not answer before it was killed is sent again:
    the client's own retry, counted apart from the relay's duplicates.
    """
    next_n = 0

    async def session() -> None:
        nonlocal next_n
        client: aiosmtplib.SMTP | None = None
        while next_n < messages:
            n = next_n
            next_n += 1
            while n not in acked:
                try:
                    if client is None or not client.is_connected:
                        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
                        await client.connect()
                    await client.sendmail("news@bench.example", ["reader@example.net"], message(n))
                    acked.add(n)
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code >= 500:
                        refused.add(n)
                        break
                    client, _ = None, retried.add(n)
                    await asyncio.sleep(0.05)
                except (aiosmtplib.SMTPException, OSError):
                    client = None
                    retried.add(n)
                    await asyncio.sleep(0.05)  # the relay is being restarted

    await asyncio.gather(*(session() for _ in range(connections)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
    outbox = work / "outbox"
    sink_port, relay_port = free_port(), free_port()
    listen = f"127.0.0.1:{sink_port}"
    sink = subprocess.Popen(
        [sys.executable, "-m", "relay", "sink", "--listen", listen, "--dir", str(outbox)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(sink_port)
    # One campaign of 10,000 to one opted-in reader: the limits are set high (full_policy), or
    # the broadcast policy would rightly halt the account at 10,000 recipients.
    url = f"sqlite:///{work}/relay.db"
    asyncio.run(seed_store(url, consents=["reader@example.net"]))
    path = relay_config(
        work,
        listener={"address": f"127.0.0.1:{relay_port}", "tls": "none", "trusted_account": "bench"},
        sink_port=sink_port,
        web_port=free_port(),
        storage=url,
        full_policy=True,
        delivery={"lease": 2, "retry_schedule": [1], "jitter": 0},
    )
    relay = start_relay(path)
    wait_port(relay_port)
    acked: set[int] = set()
    kills = 0
    rng = random.Random(7)  # when to kill, not secrecy
    started = time.monotonic()

    async def run() -> None:
        nonlocal relay, kills
        sending = asyncio.create_task(load(relay_port, args.messages, args.connections, acked))
        while kills < args.kills and not sending.done():
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            relay.send_signal(signal.SIGKILL)
            relay.wait()
            kills += 1
            relay = start_relay(path)
            await asyncio.to_thread(wait_port, relay_port)
            if kills % 10 == 0:
                print(f"{kills} kills, {len(acked)} answered 250", flush=True)
        await sending

    try:
        asyncio.run(run())
        loaded = time.monotonic() - started
        deadline = time.monotonic() + 300
        copies: Counter[int] = Counter()
        while time.monotonic() < deadline:
            copies = Counter()
            for file in outbox.glob("*.eml"):
                found = _MESSAGE_ID.search(file.read_bytes())
                if found:
                    copies[int(found.group(1))] += 1
            if acked <= set(copies):
                break
            print(f"waiting: {len(acked - set(copies))} answered but not yet delivered", flush=True)
            time.sleep(1)
    finally:
        relay.terminate()
        relay.wait(timeout=60)
        sink.terminate()
        sink.wait(timeout=10)
    lost = sorted(acked - set(copies))
    result = {
        "messages_sent": args.messages,
        "kills": kills,
        "acknowledged_250": len(acked),
        "delivered_of_acknowledged": len(acked & set(copies)),
        "lost": len(lost),
        "refused_for_good": len(refused),
        "delivered_twice_or_more": sum(1 for n in acked if copies[n] > 1),
        "twice_after_a_client_retry": sum(1 for n in retried if copies[n] > 1),
        "load_seconds": round(loaded, 1),
    }
    for key, value in result.items():
        print(f"{key:<28} {value:>8}")
    print(json.dumps(result))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
