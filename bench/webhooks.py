"""What events and webhooks cost: end to end without and with a webhook endpoint, in one run.

Each run relays `--messages` 4 KB messages (smtp-source on a trusted plain listener, the full
policy, DKIM, into Postfix's smtp-sink), alternately with no webhook and with one endpoint (a
local aiohttp receiver answering 200) that gets every event: `message.accepted` and
`message.delivered`, two per message. It reports the end-to-end rate and the relay's CPU per
message for each, their ratio, and the webhook delivery rate: events a second from the first
request to the last. Every event is written to the store in both cases (the outbox is not
optional); `--tree` measures another checkout the same way (for example the one before events).

    .venv/bin/python bench/webhooks.py [--messages 2000] [--repeat 3] [--storage URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from benchlib import cpu_seconds, smtp_source, stop, wait_delivered
from smtp_throughput import Bench

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-012345678").decode()


class Receiver:
    """A webhook endpoint in a thread of its own: counts requests and when they came."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            await request.read()
            now = time.monotonic()
            self.first = self.first or now
            self.last = now
            self.count += 1
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port
        assert isinstance(server, asyncio.Server)  # noqa: S101
        self.port = int(server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        self.count, self.first, self.last = 0, 0.0, 0.0


def with_webhook(path: Path, url: str) -> None:
    """Add a webhook endpoint for every event to the relay configuration at `path`."""
    config = yaml.safe_load(path.read_text())
    config["webhooks"] = {"allow_private": True, "poll_interval": 0.05}
    config["accounts"][0]["webhooks"] = [{"url": url, "secret": SECRET}]
    path.write_text(yaml.safe_dump(config))


def one_run(bench: Bench, receiver: Receiver | None) -> dict[str, float]:
    """End to end once; with `receiver`, every event also pushed to it."""
    n = bench.args.messages
    configure = None
    if receiver is not None:
        receiver.reset()
        url = f"http://127.0.0.1:{receiver.port}/hook"
        configure = partial(with_webhook, url=url)
    relays = bench.relays(tls=False, tree=bench.args.tree, configure=configure)
    try:
        started = time.monotonic()
        smtp_source(relays.smtp_port, n, bench.args.sessions, bench.args.size)
        wait_delivered(relays.web_ports, n)
        elapsed = time.monotonic() - started
        result = {"msgs_per_s": round(n / elapsed, 1)}
        if receiver is not None:
            deadline = time.monotonic() + 600
            while receiver.count < 2 * n and time.monotonic() < deadline:
                time.sleep(0.05)
            spread = max(receiver.last - receiver.first, 1e-9)
            result["webhook_events"] = receiver.count
            result["webhook_events_per_s"] = round(receiver.count / spread, 1)
        cpu = sum(cpu_seconds(p.pid) for p in relays.processes) - relays.idle_cpu
        result["cpu_ms_per_msg"] = round(1000 * cpu / n, 2)
    finally:
        stop(*relays.processes)
    return result


def main() -> int:
    """Alternate runs without and with a webhook; print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--storage", default="sqlite")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=None)
    parser.add_argument("--phase-sessions", type=int, default=40)
    args = parser.parse_args()
    receiver = Receiver()
    receiver.start()
    bench = Bench(args)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    try:
        for _ in range(args.repeat):
            runs["without"].append(one_run(bench, None))
            runs["with"].append(one_run(bench, receiver))
    finally:
        bench.close()
    result: dict[str, Any] = {"messages": args.messages, "storage": bench.storage.kind}
    for name, measured in runs.items():
        result[name] = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
    result["with_over_without_rate"] = round(
        result["with"]["msgs_per_s"] / result["without"]["msgs_per_s"], 3
    )
    result["with_minus_without_cpu_ms"] = round(
        result["with"]["cpu_ms_per_msg"] - result["without"]["cpu_ms_per_msg"], 2
    )
    for name in ("without", "with"):
        for key, value in result[name].items():
            print(f"{name}: {key:<30}{value:>12}")
    print(f"{'rate with / without':<39}{result['with_over_without_rate']:>12}")
    print(f"{'CPU per message, with - without (ms)':<39}{result['with_minus_without_cpu_ms']:>12}")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
