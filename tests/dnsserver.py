"""A real DNS server on loopback serving test zones (dnslib), for what the relay looks up.

Names are answered from `records` ((name, type) -> values); a name in `servfail` gets
SERVFAIL, one in `silent` no reply at all (the client times out); any other name NXDOMAIN,
or an empty answer when the name holds records of another type.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from dnslib import MX, QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer


class Zones(BaseResolver):  # type: ignore[misc]
    """The records served, changeable while the server runs."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, name: str, kind: str, *values: Any) -> None:
        """Publish `values` at `name` (TXT: strings; MX: (preference, exchange))."""
        with self.lock:
            self.records.setdefault((name.lower().rstrip("."), kind), []).extend(values)

    def remove(self, name: str, kind: str) -> None:
        """Withdraw every `kind` record at `name`."""
        with self.lock:
            self.records.pop((name.lower().rstrip("."), kind), None)

    def resolve(self, request: Any, handler: Any) -> Any:
        """The answer to one question."""
        del handler
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        reply = request.reply()
        with self.lock:
            self.asked.append((name, kind))
            if name in self.servfail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            values = list(self.records.get((name, kind), []))
            exists = any(key[0] == name for key in self.records)
        for value in values:
            if kind == "TXT":
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            elif kind == "MX":
                preference, exchange = value
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(exchange, preference)))
        if not values and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]
    """dnslib's handler, silent for the names the zones say."""

    def handle(self) -> None:
        zones: Zones = self.server.resolver
        data = self.request[0] if self.server.socket_type == socket.SOCK_DGRAM else None
        if data is not None:
            try:
                name = str(DNSRecord.parse(data).q.qname).rstrip(".").lower()
            except Exception:  # noqa: BLE001 - let dnslib answer what it cannot parse
                name = ""
            if name in zones.silent:
                return
        super().handle()


class DnsServer:
    """UDP on 127.0.0.1, a free port; `nameserver` is what `dns.nameservers` takes."""

    def __init__(self) -> None:
        self.zones = Zones()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server = DNSServer(
            self.zones, port=self.port, address="127.0.0.1", handler=_Handler, logger=_Quiet()
        )

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start_thread()

    def stop(self) -> None:
        self._server.stop()
        self._server.server.server_close()


class _Quiet:
    """dnslib's logger, saying nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *_args, **_kwargs: None
