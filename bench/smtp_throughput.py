"""Relay throughput, CPU, latency and memory against Postfix's smtp-sink, measured in one run.

Every figure below comes from one run on one machine, so the ratios hold even when the machine
is noisy; each is the median of `--repeat` (3) measurements, whose values the JSON line keeps.
The relay runs the full policy: consent enforced (every recipient has an opt-in record), every
rate limit set, suppression, broadcast detection, the unsubscribe render, the trace marker,
DKIM RSA-2048 and the durable spool; its upstream is the same smtp-sink.

- direct: Postfix's `smtp-source` into `smtp-sink`, and the Python client (aiosmtplib, the
  relay's own client library; persistent sessions) into `smtp-sink`;
- Postfix itself as a plain relay (no policy, no signing; its own folder, root needed) into the
  same sink, with the same smtp-source load; and Postfix with OpenDKIM as a milter on a unix
  socket signing every message with the relay's RSA-2048 key (Debian's `opendkim`): the
  yardsticks for the plain listener (`plain_vs_postfix_opendkim` is the one to beat), with
  Postfix + OpenDKIM's CPU per message (every Postfix daemon and OpenDKIM) against the relay's;
- one core each (`one_core`): Postfix + OpenDKIM, then one relay process, each held to the same
  single core by taskset while the load, the sink and the bench run on the others. Postfix and
  OpenDKIM spread over every core of the machine, one relay process (one event loop, one GIL)
  uses one: the whole-machine ratio compares N cores with one, this one core with one core;
- end to end over a trusted plain listener (smtp-source), and over STARTTLS + AUTH (the Python
  client, which is what a CRM is): messages per second until the last copy reached the sink,
  and the relay's CPU per message (from /proc);
- accept, then delivery, measured apart: relays with `delivery.enabled: false` take the load
  (smtp-source with `--phase-sessions` sessions, enough to find the capacity), then relays that
  only deliver drain it; each side's rate and CPU per message; with one process and with two
  (on one port, SO_REUSEPORT, sharing the store);
- the accept latency (MAIL to the 250 after DATA) at half the STARTTLS + AUTH peak rate;
- the relay's RSS with 1,000 idle TLS sessions.

Needs smtp-source and smtp-sink (Debian package `postfix`; no system Postfix daemon has to
run) and, for the OpenDKIM yardstick, Debian's `opendkim` (`.ci/bootstrap` installs both).

    .venv/bin/python bench/smtp_throughput.py [--messages 2000] [--storage sqlite|postgresql://...]
        [--only NAME,...] [--tree PATH]

`--tree` runs the end-to-end relays from another checkout of optin-relay (same virtualenv), so
two revisions are measured in one run: `git worktree add /tmp/before REV`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

import aiosmtplib
import yaml
from benchlib import (
    READERS,
    OpenDKIM,
    PostfixRelay,
    Storage,
    cpu_seconds,
    free_port,
    load,
    machine_cpu,
    message,
    percentile,
    pin,
    processes_cpu,
    relay_config,
    rss_kib,
    seed_store,
    smtp_source,
    start_relay,
    start_sink,
    stop,
    wait_delivered,
    wait_port,
)

from relay.mail.signing import generate_key, write_key
from relay.tlsutil import write_self_signed

PASSWORD = "bench-password"  # noqa: S105 - a benchmark's throwaway account
LOGIN = ("bench", PASSWORD)
CONNECTIONS = 8
SCENARIOS = (
    "direct",
    "postfix",
    "postfix_dkim",
    "plain",
    "plain2",
    "one_core",
    "starttls",
    "phases",
    "latency",
    "idle",
    "newsletter",
    "journal",
)
NEWSLETTER = [f"subscriber{n}@example.net" for n in range(10_000)]


@dataclass
class Relays:
    """Relay processes sharing one store and one SMTP port."""

    processes: list[subprocess.Popen[bytes]]
    smtp_port: int
    web_ports: list[int]
    idle_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def cpu(self) -> float:
        """CPU seconds used by all of them since they went idle after start-up."""
        return sum(cpu_seconds(p.pid) for p in self.processes) - self.idle_cpu


class Bench:
    """One run: the sink, the work folder, the store factory and the relay settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Prepare the work folder (key and certificate shared by every relay)."""
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="optin-relay-bench-"))
        self.storage = Storage(self.work, args.storage)
        self.key = self.work / "bench.example.pem"
        write_key(self.key, generate_key("rsa-sha256"))
        self.cert, self.cert_key = self.work / "cert.pem", self.work / "key.pem"
        write_self_signed(self.cert, self.cert_key, ["relay.bench.example", "localhost"])
        self.sink_port = free_port()
        self.sink = start_sink(self.sink_port, backlog=1024)
        self._count = 0

    def close(self) -> None:
        """Stop the sink, drop the PostgreSQL schemas made."""
        stop(self.sink)
        self.storage.cleanup()

    def relays(
        self,
        *,
        tls: bool,
        processes: int = 1,
        deliver: bool = True,
        accept: bool = True,
        url: str | None = None,
        tree: Path | None = None,
        consents: list[str] = READERS,
        configure: Callable[[Path], None] | None = None,
        cpus: set[int] | None = None,
    ) -> Relays:
        """Start `processes` relays (on `cpus`) on one port and one (fresh unless given) store.

        `configure` may change each relay's configuration file before the relay starts.
        """
        if url is None:
            url = self.storage.fresh()
            asyncio.run(seed_store(url, consents=consents, suppressed=10_000))
        port = free_port()
        if tls:
            listener = {"address": f"127.0.0.1:{port}", "tls": "starttls"}
            smtp: dict[str, Any] = {
                "tls": {"certificate": str(self.cert), "private_key": str(self.cert_key)},
                "auth_failure_limit": 1000,
            }
        else:
            listener = {
                "address": f"127.0.0.1:{port}",
                "tls": "none",
                "trusted_account": "bench",
            }
            smtp = {}
        if not accept:  # a delivering process whose listener nobody uses
            listener["address"] = f"127.0.0.1:{free_port()}"
        started, web_ports = [], []
        for _ in range(processes):
            self._count += 1
            web_port = free_port()
            path = relay_config(
                self.work,
                listener=listener,
                sink_port=self.sink_port,
                web_port=web_port,
                storage=url,
                password=PASSWORD,
                full_policy=True,
                delivery={} if deliver else {"enabled": False},
                log_level=self.args.log_level,
                name=f"relay-{self._count}",
                key=self.key,
                reuse_port=processes > 1,
                **smtp,
            )
            if configure is not None:
                configure(path)
            started.append(start_relay(path, tree, cpus))
            web_ports.append(web_port)
        try:
            for web_port in web_ports:
                wait_port(web_port)
            wait_port(int(listener["address"].rsplit(":", 1)[1]))
        except SystemExit:
            stop(*started)
            raise SystemExit((self.work / f"relay-{self._count}.log").read_text()[-3000:]) from None
        time.sleep(0.3)  # start-up work (migrations, key loading) is not the load's
        relays = Relays(started, port, web_ports, extra={"url": url})
        relays.idle_cpu = sum(cpu_seconds(p.pid) for p in started)
        return relays

    def send(
        self,
        relays: Relays,
        *,
        tls: bool,
        rate: float | None = None,
        sessions: int | None = None,
        cpus: set[int] | None = None,
    ) -> list[float]:
        """The load: smtp-source on the plain listener (on `cpus`), the Python client over TLS."""
        args = self.args
        if not tls:
            sessions = sessions or args.sessions
            return [smtp_source(relays.smtp_port, args.messages, sessions, args.size, cpus)]
        elapsed, latencies = asyncio.run(
            load(
                relays.smtp_port,
                connections=CONNECTIONS,
                messages=args.messages,
                size=args.size,
                starttls=True,
                login=LOGIN,
                rate=rate,
            )
        )
        return [elapsed, *latencies]


def postfix(bench: Bench, *, dkim: bool = False, cores: Cores | None = None) -> dict[str, Any]:
    """Postfix as a relay into the same sink, the same load: plain, or signing with OpenDKIM.

    With `dkim`, OpenDKIM (a milter on a unix socket) signs every message with the relay's own
    RSA-2048 key for bench.example: the relay's work without its policies, as mail software
    has done it for years. Postfix tempfails what the milter cannot sign, so every message
    counted as sent was signed. The CPU per message is Postfix's (its master and every daemon
    it ran) and OpenDKIM's: the whole yardstick, as the relay's is the whole relay.
    """
    why = PostfixRelay.available() or (OpenDKIM.available() if dkim else None)
    if why is not None:
        print(f"Postfix as a relay: not measured ({why})", file=sys.stderr)
        return {"skipped": why}
    n = bench.args.messages
    own, load_cpus = (cores.system, cores.load) if cores else (None, None)
    milter = OpenDKIM(bench.key) if dkim else None
    if milter is not None:
        milter.start(own)
    relay = PostfixRelay(bench.sink_port, milter=milter.socket if milter else None)
    relay.start(own)
    try:
        postfix_before = relay.cpu()
        started = time.monotonic()
        smtp_source(relay.port, n, bench.args.sessions, bench.args.size, load_cpus)
        deadline = started + 600
        while relay.sent() < n and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        sent = relay.sent()
        postfix_cpu = relay.cpu() - postfix_before
        signing = milter.cpu() if milter is not None else 0.0
    finally:
        relay.stop()
        if milter is not None:
            milter.stop()
    if sent < n:
        raise SystemExit(f"Postfix sent {sent} of {n} messages (log: {relay.log})")
    result = {
        "msgs_per_s": round(n / elapsed, 1),
        "cpu_ms_per_msg": round(1000 * (postfix_cpu + signing) / n, 3),
    }
    if milter is not None:
        result["opendkim_cpu_ms_per_msg"] = round(1000 * signing / n, 3)
    return result


@dataclass(frozen=True)
class Cores:
    """The system under test on `system`; the load, the sink and the bench on `load`."""

    system: set[int]
    load: set[int]

    @staticmethod
    def split() -> Cores | None:
        """The first usable core for the system, the others for the rest (None with one core)."""
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:  # the system's core, and one at least for the load
            return None
        try:  # a container may refuse to pin
            os.sched_setaffinity(0, set(usable))
        except OSError:
            return None
        return Cores({usable[0]}, set(usable[1:]))


def one_core(bench: Bench) -> dict[str, Any]:
    """Postfix + OpenDKIM, then one relay process, each given one core (the load the others).

    Postfix and OpenDKIM are several processes and threads: on a machine of N cores they use
    them all, while one relay process (one event loop) uses one; `plain_vs_postfix_opendkim`
    compares the two on the whole machine. Here each has the same single core (taskset: every
    Postfix daemon, OpenDKIM's threads, every thread of the relay), and smtp-source, smtp-sink
    and the bench itself run on the other cores: the rate each gets out of one core.
    """
    cores = Cores.split()
    if cores is None:
        return {"skipped": "needs two cores it may pin processes to"}
    why = PostfixRelay.available() or OpenDKIM.available()
    if why is not None:
        return {"skipped": why}
    everywhere = os.sched_getaffinity(0)
    pin(os.getpid(), cores.load)
    pin(bench.sink.pid, cores.load)
    try:
        yardstick = postfix(bench, dkim=True, cores=cores)
        relay = end_to_end(bench, tls=False, cores=cores)
    finally:
        pin(bench.sink.pid, everywhere)
        pin(os.getpid(), everywhere)
    return {
        "postfix_opendkim_msgs_per_s": yardstick["msgs_per_s"],
        "relay_msgs_per_s": relay["msgs_per_s"],
        "relay_vs_postfix_opendkim": round(relay["msgs_per_s"] / yardstick["msgs_per_s"], 4),
    }


def end_to_end(
    bench: Bench,
    *,
    tls: bool,
    tree: Path | None = None,
    processes: int = 1,
    configure: Callable[[Path], None] | None = None,
    cores: Cores | None = None,
) -> dict[str, float]:
    """Messages per second until the last copy reached the sink, and CPU per message."""
    n = bench.args.messages
    own, load_cpus = (cores.system, cores.load) if cores else (None, None)
    relays = bench.relays(tls=tls, tree=tree, processes=processes, configure=configure, cpus=own)
    try:
        started = time.monotonic()
        bench.send(relays, tls=tls, cpus=load_cpus)
        wait_delivered(relays.web_ports, n)
        elapsed = time.monotonic() - started
        cpu = relays.cpu()
    finally:
        stop(*relays.processes)
    return {"msgs_per_s": round(n / elapsed, 1), "cpu_ms_per_msg": round(1000 * cpu / n, 2)}


def journal_off(path: Path) -> None:
    """Turn the journal off in a relay's configuration file."""
    config = yaml.safe_load(path.read_text())
    config["journal"] = {"enabled": False}
    path.write_text(yaml.safe_dump(config))


def journal_cost(bench: Bench) -> dict[str, Any]:
    """End to end over the plain listener with the journal on and off, runs alternating."""
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(bench.args.repeat):
        runs["on"].append(end_to_end(bench, tls=False))
        runs["off"].append(end_to_end(bench, tls=False, configure=journal_off))
    on, off = median_of(runs["on"]), median_of(runs["off"])
    # The newsletter journals a RCPT entry per recipient and a render entry per copy.
    letter_on, letter_off = newsletter(bench), newsletter(bench, configure=journal_off)
    return {
        "on": on,
        "off": off,
        "rate_on_vs_off": round(on["msgs_per_s"] / off["msgs_per_s"], 4),
        "cpu_ms_added": round(on["cpu_ms_per_msg"] - off["cpu_ms_per_msg"], 3),
        "newsletter_on": letter_on,
        "newsletter_off": letter_off,
    }


def phases(bench: Bench, processes: int) -> dict[str, float]:
    """Accept with relays that do not deliver, then drain with relays that only deliver.

    Each side also reports how busy the whole machine was (1.0: every core) and, on
    PostgreSQL, the database server's CPU per message: on a small machine running the database
    too, the cores run out before the relay processes do.
    """
    n = bench.args.messages
    accepting = bench.relays(tls=False, processes=processes, deliver=False)
    try:
        with Usage() as accept_usage:
            elapsed = bench.send(accepting, tls=False, sessions=bench.args.phase_sessions)[0]
        accept_cpu = accepting.cpu()
    finally:
        stop(*accepting.processes)
    url = accepting.extra["url"]
    delivering = bench.relays(tls=False, processes=processes, accept=False, url=url)
    try:
        with Usage() as drain_usage:
            started = time.monotonic()
            wait_delivered(delivering.web_ports, n)
            drained = time.monotonic() - started
        delivery_cpu = delivering.cpu()
    finally:
        stop(*delivering.processes)
    result = {
        "accept_msgs_per_s": round(n / elapsed, 1),
        "accept_cpu_ms_per_msg": round(1000 * accept_cpu / n, 2),
        "accept_machine_busy": accept_usage.busy,
        "drain_msgs_per_s": round(n / drained, 1),
        "delivery_cpu_ms_per_msg": round(1000 * delivery_cpu / n, 2),
        "drain_machine_busy": drain_usage.busy,
    }
    if bench.storage.kind == "postgresql":
        result["accept_db_cpu_ms_per_msg"] = round(1000 * accept_usage.db / n, 2)
        result["drain_db_cpu_ms_per_msg"] = round(1000 * drain_usage.db / n, 2)
        # the database's whole cost of one relayed one-recipient message (issue 25: <= 1.5)
        result["db_cpu_ms_per_msg"] = round(1000 * (accept_usage.db + drain_usage.db) / n, 2)
    return result


class Usage:
    """The machine's busy share of all cores, and the database server's CPU, over a block."""

    def __enter__(self) -> Self:
        self._machine, self._db = machine_cpu(), processes_cpu("postgres")
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = machine_cpu()
        self.busy = round((busy - self._machine[0]) / max(total - self._machine[1], 1e-9), 2)
        self.db = processes_cpu("postgres") - self._db


def newsletter(bench: Bench, configure: Callable[[Path], None] | None = None) -> dict[str, float]:
    """10,000 subscribers in 10 transactions of 1,000 (STARTTLS + AUTH), then their delivery.

    Accepted by a relay that does not deliver, then drained by one that only delivers: each
    copy gets its own unsubscribe token, footer and DKIM signature.
    """
    accepting = bench.relays(tls=True, deliver=False, consents=NEWSLETTER, configure=configure)
    per = 1000

    async def send() -> float:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=accepting.smtp_port,
            start_tls=True,
            validate_certs=False,
            timeout=300,
        )
        await client.connect()
        await client.login(*LOGIN)
        started = time.monotonic()
        for first in range(0, len(NEWSLETTER), per):
            await client.sendmail(
                "news@bench.example", NEWSLETTER[first : first + per], message(50_000)
            )
        elapsed = time.monotonic() - started
        await client.quit()
        return elapsed

    try:
        accepted_in = asyncio.run(send())
        accept_cpu = accepting.cpu()
    finally:
        stop(*accepting.processes)
    delivering = bench.relays(
        tls=False, accept=False, url=accepting.extra["url"], configure=configure
    )
    try:
        started = time.monotonic()
        wait_delivered(delivering.web_ports, len(NEWSLETTER))
        drained = time.monotonic() - started
        delivery_cpu = delivering.cpu()
    finally:
        stop(*delivering.processes)
    n = len(NEWSLETTER)
    return {
        "recipients": n,
        "message_bytes": len(message(50_000)),
        "accept_recipients_per_s": round(n / accepted_in, 1),
        "accept_cpu_ms_per_recipient": round(1000 * accept_cpu / n, 3),
        "drain_recipients_per_s": round(n / drained, 1),
        "delivery_cpu_ms_per_recipient": round(1000 * delivery_cpu / n, 2),
    }


def latency(bench: Bench, peak: float) -> dict[str, float]:
    """Accept latency over STARTTLS + AUTH at half the measured peak rate."""
    relays = bench.relays(tls=True)
    try:
        _, *latencies = bench.send(relays, tls=True, rate=peak / 2)
    finally:
        stop(*relays.processes)
    return {
        "rate": round(peak / 2, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


async def _reply(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    return line


async def _idle_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` sessions that said EHLO and STARTTLS and then wait, as a pooling client's do."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    writers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)  # the greeting
        writer.write(b"EHLO bench.example\r\nSTARTTLS\r\n")
        await _reply(reader)
        await _reply(reader)
        await writer.start_tls(context)
        writer.write(b"EHLO bench.example\r\n")
        await _reply(reader)
        writers.append(writer)
    return writers


def idle(bench: Bench, count: int = 1000) -> dict[str, float]:
    """The relay's RSS before and with `count` idle TLS sessions open (EHLO, STARTTLS, EHLO)."""
    relays = bench.relays(tls=True)
    pid = relays.processes[0].pid
    try:
        before = rss_kib(pid)

        async def hold() -> int:
            writers = await _idle_connections(relays.smtp_port, count)
            await asyncio.sleep(1)
            during = rss_kib(pid)
            for writer in writers:
                writer.close()
            return during

        during = asyncio.run(hold())
    finally:
        stop(*relays.processes)
    return {
        "connections": count,
        "rss_mib_before": round(before / 1024, 1),
        "rss_mib_idle": round(during / 1024, 1),
        "kib_per_connection": round((during - before) / count, 1),
    }


def direct(bench: Bench) -> dict[str, float]:
    """smtp-source and the Python client straight into smtp-sink."""
    args = bench.args
    n = args.messages
    source = smtp_source(bench.sink_port, n, args.sessions, args.size)
    client, _ = asyncio.run(
        load(bench.sink_port, connections=CONNECTIONS, messages=n, size=args.size)
    )
    return {
        "smtp_source_msgs_per_s": round(n / source, 1),
        "client_msgs_per_s": round(n / client, 1),
    }


def journal_rows(journal: dict[str, Any]) -> list[tuple[str, Any]]:
    """The journal's cost as table rows."""
    rows = [
        (f"journal {side}, plain listener: {key}", value)
        for side in ("on", "off")
        for key, value in journal.get(side, {}).items()
    ] + [
        (f"journal {side.removeprefix('newsletter_')}, newsletter: {key}", value)
        for side in ("newsletter_on", "newsletter_off")
        for key, value in journal.get(side, {}).items()
    ]
    totals = ("rate_on_vs_off", "cpu_ms_added")
    return rows + [(f"journal: {key}", journal.get(key)) for key in totals]


def report(result: dict[str, Any]) -> None:
    """The figures as a table, then as one JSON line."""
    d = result.get("direct", {})
    rows: list[tuple[str, Any]] = [
        ("smtp-source -> smtp-sink (msg/s)", d.get("smtp_source_msgs_per_s")),
        ("python client -> smtp-sink (msg/s)", d.get("client_msgs_per_s")),
    ]
    for name, label in (
        ("postfix", "Postfix as a plain relay -> smtp-sink"),
        ("postfix_dkim", "Postfix + OpenDKIM milter -> smtp-sink"),
        ("plain", "relay end to end, plain listener"),
        ("plain_2", "relay end to end, plain listener, 2 processes"),
        ("starttls", "relay end to end, STARTTLS + AUTH"),
    ):
        for key, value in result.get(name, {}).items():
            rows.append((f"{label}: {key}", value))
    for name in ("phases_1", "phases_2"):
        for key, value in result.get(name, {}).items():
            rows.append((f"{name.replace('_', ', ')} process(es): {key}", value))
    for name in ("one_core", "ratios", "latency", "idle", "newsletter"):
        for key, value in result.get(name, {}).items():
            rows.append((f"{name}: {key}", value))
    rows += journal_rows(result.get("journal", {}))
    for label, value in rows:
        if value is not None and not label.endswith("_runs"):
            print(f"{label:<62} {value:>10}")
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10, help="smtp-source's sessions")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument(
        "--phase-sessions",
        type=int,
        default=40,
        help="smtp-source's sessions when measuring accept capacity (1 and 2 processes)",
    )
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--log-level", default="info", help="the relay's (info in production)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each scenario; the median is reported"
    )
    parser.add_argument("--tree", type=Path, default=None, help="end-to-end relays from here")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix (no daemon needed)")
    wanted = set(args.only.split(","))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    bench = Bench(args)
    result: dict[str, Any] = {
        "messages": args.messages,
        "size": args.size,
        "storage": bench.storage.kind,
        "log_level": args.log_level,
    }
    try:
        for name in SCENARIOS:
            if name in wanted:
                run_scenario(bench, name, result)
    finally:
        bench.close()
    result["ratios"] = ratios(result)
    report(result)
    return 0


def run_scenario(bench: Bench, name: str, result: dict[str, Any]) -> None:
    """Measure one scenario into `result` (latency needs the STARTTLS peak: measured first)."""
    tree = bench.args.tree
    if name == "latency" and "starttls" not in result:
        result["starttls"] = end_to_end(bench, tls=True, tree=tree)
    measures: dict[str, Callable[[], dict[str, Any]]] = {
        "direct": lambda: direct(bench),
        "postfix": lambda: postfix(bench),
        "postfix_dkim": lambda: postfix(bench, dkim=True),
        "plain": lambda: end_to_end(bench, tls=False, tree=tree),
        "plain_2": lambda: end_to_end(bench, tls=False, tree=tree, processes=2),
        "one_core": lambda: one_core(bench),
        "starttls": lambda: end_to_end(bench, tls=True, tree=tree),
        "phases_1": lambda: phases(bench, 1),
        "phases_2": lambda: phases(bench, 2),
        "latency": lambda: latency(bench, result["starttls"]["msgs_per_s"]),
        "idle": lambda: idle(bench),
        "newsletter": lambda: newsletter(bench),
        "journal": lambda: journal_cost(bench),
    }
    keys = {"plain2": ["plain_2"], "phases": ["phases_1", "phases_2"]}.get(name, [name])
    # The newsletter takes a minute; the journal's cost alternates its own repeats.
    runs = 1 if name in ("newsletter", "journal") else bench.args.repeat
    for key in keys:
        result[key] = median_of([measures[key]() for _ in range(runs)])


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (the runs' own figures too, when more than one)."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            merged[key] = round(statistics.median(values), 4)
            merged[f"{key}_runs"] = values
        else:
            merged[key] = first
    return merged


def against_postfix(result: dict[str, Any]) -> dict[str, float]:
    """The relay's plain-listener rates against Postfix's, plain and signing with OpenDKIM."""
    out: dict[str, float] = {}
    d = result.get("direct")
    for name, suffix in (("postfix", "postfix"), ("postfix_dkim", "postfix_opendkim")):
        rate = result.get(name, {}).get("msgs_per_s")
        if not rate:
            continue
        if name == "postfix":
            out["postfix_vs_smtp_sink"] = rate / d["smtp_source_msgs_per_s"] if d else 0.0
        if "plain" in result:
            out[f"plain_vs_{suffix}"] = result["plain"]["msgs_per_s"] / rate
        if "plain_2" in result:
            out[f"plain_2_processes_vs_{suffix}"] = result["plain_2"]["msgs_per_s"] / rate
    cpu = result.get("postfix_dkim", {}).get("cpu_ms_per_msg")
    if cpu and "plain" in result:
        # Below 1: the relay spends less CPU on a message (all its policy included).
        out["plain_cpu_vs_postfix_opendkim_cpu"] = result["plain"]["cpu_ms_per_msg"] / cpu
    return out


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The relay's rates against the direct ones, and two processes against one."""
    out: dict[str, float] = {}
    d = result.get("direct")
    if d:
        if "plain" in result:
            out["plain_vs_smtp_sink"] = result["plain"]["msgs_per_s"] / d["smtp_source_msgs_per_s"]
        if "starttls" in result:
            out["starttls_vs_smtp_sink"] = (
                result["starttls"]["msgs_per_s"] / d["smtp_source_msgs_per_s"]
            )
            out["starttls_vs_same_client_direct"] = (
                result["starttls"]["msgs_per_s"] / d["client_msgs_per_s"]
            )
    out |= against_postfix(result)
    one, two = result.get("phases_1"), result.get("phases_2")
    if one and two:
        out["two_processes_accept"] = two["accept_msgs_per_s"] / one["accept_msgs_per_s"]
        out["two_processes_drain"] = two["drain_msgs_per_s"] / one["drain_msgs_per_s"]
    return {key: round(value, 4) for key, value in out.items()}


if __name__ == "__main__":
    sys.exit(main())
