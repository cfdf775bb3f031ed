"""Where one relay process's CPU goes under load: per thread, and how busy the machine was.

One relay (the full policy, the plain listener, as `smtp_throughput.py`'s `plain` scenario)
takes `--messages` from Postfix's `smtp-source` and delivers them to `smtp-sink`. Printed, for
the load alone: the rate, each busy thread's CPU per message and its share of a core, and the
whole machine's busy share. The event loop's thread is the first line: when it runs near one
core while the machine has cores to spare, the process is bound by the work its loop does with
the GIL held, and only less of that work (not more sessions, not more threads) raises its rate.

    .venv/bin/python bench/threads.py [--messages 4000] [--sessions 20] [--storage URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    READERS,
    Storage,
    free_port,
    machine_cpu,
    relay_config,
    seed_store,
    smtp_source,
    start_relay,
    start_sink,
    stop,
    wait_delivered,
    wait_port,
)

from relay.mail.signing import generate_key, write_key

PASSWORD = "bench-password"  # noqa: S105 - a benchmark's throwaway account


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of `pid`: its name and the CPU seconds it has used (from /proc)."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "stat").read_text()
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return found


def main() -> int:
    """Measure one load and print the breakdown (a JSON line last)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source's sessions")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optin-relay-threads-"))
    storage = Storage(work, args.storage)
    key = work / "bench.example.pem"
    write_key(key, generate_key("rsa-sha256"))
    sink_port, port, web_port = free_port(), free_port(), free_port()
    sink = start_sink(sink_port, backlog=1024)
    relay = None
    try:
        url = storage.fresh()
        asyncio.run(seed_store(url, consents=READERS, suppressed=10_000))
        config = relay_config(
            work,
            listener={"address": f"127.0.0.1:{port}", "tls": "none", "trusted_account": "bench"},
            sink_port=sink_port,
            web_port=web_port,
            storage=url,
            password=PASSWORD,
            full_policy=True,
            delivery={},
            log_level="info",
            name="relay",
            key=key,
            reuse_port=False,
        )
        relay = start_relay(config)
        wait_port(web_port)
        wait_port(port)
        time.sleep(0.3)  # start-up work is not the load's
        before, machine = threads(relay.pid), machine_cpu()
        started = time.monotonic()
        smtp_source(port, args.messages, args.sessions, args.size)
        wait_delivered([web_port], args.messages)
        elapsed = time.monotonic() - started
        after, (busy, total) = threads(relay.pid), machine_cpu()
    finally:
        stop(relay, sink)
        storage.cleanup()
    n = args.messages
    used = {
        tid: (name, seconds - before.get(tid, (name, 0.0))[1])
        for tid, (name, seconds) in after.items()
    }
    loop_thread = relay.pid  # the main thread runs the event loop
    rows = sorted(used.items(), key=lambda item: (item[0] != loop_thread, -item[1][1]))
    result = {
        "messages": n,
        "storage": storage.kind,
        "msgs_per_s": round(n / elapsed, 1),
        "cpu_ms_per_msg": round(1000 * sum(s for _, s in used.values()) / n, 2),
        "machine_busy": round((busy - machine[0]) / max(total - machine[1], 1e-9), 2),
        "cores": os.cpu_count(),
        "threads": [],
    }
    print(f"{n} messages at {result['msgs_per_s']} msg/s, {result['cpu_ms_per_msg']} ms CPU each")
    for tid, (name, seconds) in rows:
        if seconds < 0.01 * elapsed:  # idle threads (executors, libuv's pool)
            continue
        # Python names no OS thread: the others are the store's and the executors' threads
        role = "event loop" if tid == loop_thread else f"{name} {tid}"
        share = round(seconds / elapsed, 2)
        per = round(1000 * seconds / n, 2)
        result["threads"].append({"thread": role, "cpu_ms_per_msg": per, "core_share": share})
        print(f"  {role:<12} {per:6.2f} ms per message, {share:.2f} of a core")
    print(f"  the machine: {result['machine_busy']:.2f} of its {os.cpu_count()} cores busy")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
