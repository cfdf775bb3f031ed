"""Configuration of what the relay looks up in DNS: where it asks, and what it proves.

`dns`: the resolver (the system's, unless `nameservers` names others: tests point it at a
server on loopback). `deliverability`: what the sending domains must publish.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

from relay.configtypes import Duration, Model


def _nameserver(value: str) -> str:
    """`IP` or `IP:PORT` (`[IPv6]:PORT`), checked; returned as given."""
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, port = value.split(":")
    ipaddress.ip_address(host)  # ValueError: not an address
    if not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004 - the port range
        raise ValueError(f"bad port in {value!r}")
    return value


def split_nameserver(value: str) -> tuple[str, int]:
    """The address and port of a checked `dns.nameservers` entry."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest.removeprefix(":") or 53)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


class DnsConfig(Model):
    """How the relay resolves names (the sending domains' records)."""

    nameservers: list[Annotated[str, AfterValidator(_nameserver)]] = Field(
        default_factory=list,
        description="IP or IP:PORT of each server to ask; empty: the system's (/etc/resolv.conf)",
    )
    timeout: Annotated[Duration, Field(gt=0)] = Field(
        default=5.0, description="how long one lookup may take, every server tried"
    )


class DeliverabilityConfig(Model):
    """What the relay proves about each account's sending domains."""

    sending_ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list,
        description="the upstream's sending addresses: the envelope domain's SPF must allow them",
    )
    recheck: Annotated[Duration, Field(gt=0)] = Field(
        default=6 * 3600.0,
        description="with the domain_auth policy on: how often each relay looks the domains up",
    )
