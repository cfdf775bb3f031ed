"""DNS lookups for the sending domains' records, through dnspython's asynchronous resolver.

An answer that the name or the record does not exist is an answer (an empty list); a server
that fails (SERVFAIL, a refusal) or does not answer in time is `LookupFailed`: the caller does
not know, and must not act as if the record were missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from relay.configdomains import split_nameserver

if TYPE_CHECKING:
    from relay.configdomains import DnsConfig


class LookupFailed(Exception):  # noqa: N818 - what happened, not an error of the code
    """The DNS gave no answer: SERVFAIL, a refusal, or no reply in time."""


class Resolver:
    """TXT and MX lookups, from `dns.nameservers` or the system's resolvers."""

    def __init__(self, config: DnsConfig) -> None:
        """Ask `config.nameservers` (else /etc/resolv.conf), each lookup within its timeout.

        Raises LookupFailed when neither names a server.
        """
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            raise LookupFailed(
                f"no DNS server to ask: /etc/resolv.conf names none; set dns.nameservers ({exc})"
            ) from exc
        if config.nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*split_nameserver(server))
                for server in config.nameservers
            ]
        self._resolver.lifetime = config.timeout
        self._resolver.timeout = config.timeout
        self._resolver.cache = None  # every check sees what is published now

    async def _answer(self, name: str, kind: str) -> dns.resolver.Answer | None:
        try:
            return await self._resolver.resolve(name, kind, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL), Timeout, ...
            raise LookupFailed(f"{name} {kind}: {exc}") from exc

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name`, each record's strings joined; [] when there are none."""
        answer = await self._answer(name, "TXT")
        if answer is None:
            return []
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]

    async def mx(self, name: str) -> list[str]:
        """The mail exchangers of `name`, best first; [] when there are none."""
        answer = await self._answer(name, "MX")
        if answer is None:
            return []
        ordered = sorted(answer, key=lambda record: record.preference)
        return [record.exchange.to_text(omit_final_dot=True) for record in ordered]
