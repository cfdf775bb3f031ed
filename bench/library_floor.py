"""The floor under the relay's CPU per message: what its own libraries cost doing nothing else.

The relay is built on aiosmtpd (receiving), aiosmtplib (relaying upstream) and OpenSSL through
`cryptography` under dkimpy (RSA-2048 signing): the project's non-negotiables. This benchmark
measures, in one run and on the same load as `smtp_throughput.py`'s phases, each library alone:

- receive, plain: a bare aiosmtpd server (uvloop, as the relay runs) whose handler answers 250
  to everything and keeps nothing, loaded by Postfix's smtp-source (one message per session,
  `--sessions` at once, `--size` bytes);
- receive, STARTTLS + AUTH: the same server requiring TLS and AUTH (a constant-time comparison,
  no password hash), loaded by the Python client over persistent sessions;
- relay upstream: a bare aiosmtplib client sending the messages over persistent sessions into
  smtp-sink, as the relay's delivery does, without signing, then signing each copy first with
  the relay's own signer (dkimpy canonicalisation, OpenSSL RSA-2048);
- and, unless `--no-relay`, the relay's own accept and delivery phases in the same run, with the
  full policy (`smtp_throughput.phases`), so each is also printed as a multiple of its floor.

Each process's CPU comes from /proc (user + system). The floor of a relayed one-recipient
message is receive + relay upstream with signing: no policy, no store, no log, no spool.

    .venv/bin/python bench/library_floor.py [--messages 3000] [--storage sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    cpu_seconds,
    free_port,
    load,
    message,
    sink_command,
    smtp_source,
    stop,
    wait_port,
)

CONNECTIONS = 8
LOGIN = ("floor", "floor-password")


def serve(port: int, *, tls: bool, cert: str, key: str) -> None:
    """A bare aiosmtpd server: 250 to every message, nothing kept (run in its own process)."""
    import hmac  # noqa: PLC0415 - the server process only

    import uvloop  # noqa: PLC0415
    from aiosmtpd.smtp import SMTP, AuthResult  # noqa: PLC0415

    class Handler:
        async def handle_DATA(self, *hook: object) -> str:  # noqa: N802 - aiosmtpd's hook
            del hook  # server, session, envelope: nothing is kept
            return "250 2.0.0 Ok"

    def check(*hook: Any) -> AuthResult:  # aiosmtpd's authenticator
        data = hook[-1]  # server, session, envelope, mechanism, then the credentials
        good = hmac.compare_digest(data.login, LOGIN[0].encode()) and hmac.compare_digest(
            data.password, LOGIN[1].encode()
        )
        return AuthResult(success=good)

    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="floor.bench.example",
                decode_data=False,
                tls_context=context,
                require_starttls=tls,
                auth_required=tls,
                authenticator=check if tls else None,
                auth_require_tls=True,
            ),
            "127.0.0.1",
            port,
            backlog=1024,
        )
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def deliver(port: int, messages: int, size: int, *, sign: bool) -> None:
    """Send `messages` into smtp-sink over persistent sessions; print this process's CPU."""
    import aiosmtplib  # noqa: PLC0415 - the delivering process only
    import uvloop  # noqa: PLC0415

    from relay.mail.signing import Signer, generate_key, make_key  # noqa: PLC0415

    signer = Signer([make_key("bench.example", "floor", "rsa-sha256", generate_key("rsa-sha256"))])
    body = message(size)
    remaining = list(range(messages))

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        while remaining:
            remaining.pop()
            copy = signer.sign(body, "bench.example") + body if sign else body
            await client.sendmail("news@bench.example", ["reader@example.net"], copy)
        await client.quit()

    async def main() -> None:
        await asyncio.gather(*(session() for _ in range(CONNECTIONS)))

    started_cpu, started = time.process_time(), time.monotonic()
    uvloop.run(main())
    cpu, elapsed = time.process_time() - started_cpu, time.monotonic() - started
    print(json.dumps({"cpu": cpu, "elapsed": elapsed}))


def receive(args: argparse.Namespace, work: Path, *, tls: bool) -> dict[str, float]:
    """CPU per message of the bare aiosmtpd server under the load."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            *(["--tls"] if tls else []),
            *("--cert", str(work / "cert.pem"), "--key", str(work / "key.pem")),
        ]
    )
    try:
        wait_port(port)
        time.sleep(0.3)
        before = cpu_seconds(server.pid)
        if tls:
            elapsed, _ = asyncio.run(
                load(
                    port,
                    connections=CONNECTIONS,
                    messages=args.messages,
                    size=args.size,
                    starttls=True,
                    login=LOGIN,
                )
            )
        else:
            elapsed = smtp_source(port, args.messages, args.sessions, args.size)
        cpu = cpu_seconds(server.pid) - before
    finally:
        stop(server)
    return {
        "msgs_per_s": round(args.messages / elapsed, 1),
        "cpu_ms_per_msg": round(1000 * cpu / args.messages, 3),
    }


def upstream(args: argparse.Namespace, sink_port: int, *, sign: bool) -> dict[str, float]:
    """CPU per message of the bare aiosmtplib client (signing each copy first, if asked)."""
    command = [sys.executable, __file__, "--deliver", str(sink_port)]
    command += ["--messages", str(args.messages), "--size", str(args.size)]
    out = subprocess.run(
        [*command, *(["--sign"] if sign else [])], check=True, capture_output=True, text=True
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "msgs_per_s": round(args.messages / figures["elapsed"], 1),
        "cpu_ms_per_msg": round(1000 * figures["cpu"] / args.messages, 3),
    }


def relay_phases(args: argparse.Namespace) -> dict[str, float]:
    """The relay's own accept and delivery phases, full policy (smtp_throughput's scenario)."""
    import smtp_throughput  # noqa: PLC0415 - the relay's benchmark, same folder

    bench = smtp_throughput.Bench(
        argparse.Namespace(
            messages=args.messages,
            sessions=args.sessions,
            size=args.size,
            phase_sessions=args.sessions,
            storage=args.storage,
            log_level="info",
            tree=None,
            repeat=1,
        )
    )
    try:
        return smtp_throughput.phases(bench, 1)
    finally:
        bench.close()


def measure(args: argparse.Namespace, work: Path, sink_port: int) -> dict[str, Any]:
    """One round of every measurement."""
    result: dict[str, Any] = {
        "receive_plain": receive(args, work, tls=False),
        "receive_starttls_auth": receive(args, work, tls=True),
        "upstream": upstream(args, sink_port, sign=False),
        "upstream_signed": upstream(args, sink_port, sign=True),
    }
    if not args.no_relay:
        result["relay"] = relay_phases(args)
    return result


def median(rounds: list[dict[str, Any]], *path: str) -> float:
    """The median over the rounds of one figure."""
    values = []
    for one in rounds:
        value: Any = one
        for key in path:
            value = value[key]
        values.append(float(value))
    return round(statistics.median(values), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deliver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sign", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=40, help="smtp-source's sessions")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    parser.add_argument("--storage", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument("--no-relay", action="store_true", help="the floors only")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, tls=args.tls, cert=args.cert, key=args.key)
        return 0
    if args.deliver:
        deliver(args.deliver, args.messages, args.size, sign=args.sign)
        return 0
    return report(args)


def report(args: argparse.Namespace) -> int:
    """Run the rounds and print the medians, the floor and the relay's multiples of it."""
    import tempfile  # noqa: PLC0415

    from relay.tlsutil import write_self_signed  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="optin-relay-floor-"))
    write_self_signed(work / "cert.pem", work / "key.pem", ["localhost"])
    sink_port = free_port()
    sink = subprocess.Popen(sink_command(sink_port, backlog=1024))
    try:
        wait_port(sink_port)
        rounds = [measure(args, work, sink_port) for _ in range(args.repeat)]
    finally:
        stop(sink)
    plain = median(rounds, "receive_plain", "cpu_ms_per_msg")
    tls = median(rounds, "receive_starttls_auth", "cpu_ms_per_msg")
    bare = median(rounds, "upstream", "cpu_ms_per_msg")
    signed = median(rounds, "upstream_signed", "cpu_ms_per_msg")
    summary: dict[str, Any] = {
        "messages": args.messages,
        "cores": os.cpu_count(),
        "receive_plain_cpu_ms": plain,
        "receive_starttls_auth_cpu_ms": tls,
        "upstream_cpu_ms": bare,
        "upstream_signed_cpu_ms": signed,
        "floor_plain_cpu_ms": round(plain + signed, 3),
        "floor_starttls_auth_cpu_ms": round(tls + signed, 3),
    }
    print(f"bare aiosmtpd, plain (smtp-source)       {plain:7.3f} ms CPU per message")
    print(f"bare aiosmtpd, STARTTLS + AUTH (client)  {tls:7.3f} ms")
    print(f"bare aiosmtplib upstream                 {bare:7.3f} ms")
    print(f"bare aiosmtplib upstream + RSA-2048 DKIM {signed:7.3f} ms")
    print(f"floor of a relayed message, plain        {plain + signed:7.3f} ms")
    print(f"floor of a relayed message, STARTTLS     {tls + signed:7.3f} ms")
    if not args.no_relay:
        accept = median(rounds, "relay", "accept_cpu_ms_per_msg")
        delivery = median(rounds, "relay", "delivery_cpu_ms_per_msg")
        summary |= {
            "relay_accept_cpu_ms": accept,
            "relay_delivery_cpu_ms": delivery,
            "relay_accept_over_floor": round(accept / plain, 2),
            "relay_delivery_over_floor": round(delivery / signed, 2),
            "relay_total_over_floor": round((accept + delivery) / (plain + signed), 2),
        }
        print(f"relay accept (full policy)               {accept:7.3f} ms ({accept / plain:.2f}x)")
        print(
            f"relay delivery (render, DKIM, outcome)   {delivery:7.3f} ms "
            f"({delivery / signed:.2f}x)"
        )
        # The machine's speed moves between rounds: each round's relay over that round's floor.
        within = [
            (one["relay"]["accept_cpu_ms_per_msg"] + one["relay"]["delivery_cpu_ms_per_msg"])
            / (one["receive_plain"]["cpu_ms_per_msg"] + one["upstream_signed"]["cpu_ms_per_msg"])
            for one in rounds
        ]
        summary["relay_over_floor_by_round"] = [round(x, 2) for x in within]
        summary["relay_over_floor_median_of_rounds"] = round(statistics.median(within), 2)
        print(
            f"relay over the floor, round by round     "
            f"{', '.join(f'{x:.2f}x' for x in within)} (median {statistics.median(within):.2f}x)"
        )
    summary["rounds"] = rounds
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
