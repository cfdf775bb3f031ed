"""Sending domains proven by DNS, as SES and its kind prove them before they send.

For each account and each of its From domains the relay looks up what the mailbox providers
check (docs/deliverability.md) and concludes:

- `dkim SELECTOR`, for every key configured for the domain (both selectors during a rotation):
  the record at SELECTOR._domainkey.DOMAIN publishes that key;
- `dmarc`: a DMARC record at the domain or, failing that, its organisational domain (the
  Public Suffix List), and the relay's own signature (d= the From domain) aligned with it;
- `envelope spf` and `envelope mx`: the envelope domain (`bounce+TOKEN@` the relay's own
  domain) has an SPF record, allowing `deliverability.sending_ips` when they are listed (its
  `ip4:` and `ip6:` mechanisms), and an MX, so bounces come back.

Each requirement is `ok`, `missing`, `failing` (published, but wrong) or `unknown` (the DNS did
not answer). The domain is `verified` when every one is ok, `failing` when any answered one is
not, else `unknown`. A check that is `unknown` keeps the last conclusive status (`settled`):
a DNS outage never turns a verified domain into a failing one.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from typing import TYPE_CHECKING

from relay.mail.dnsrecords import key_published, tags, txt_record
from relay.resolver import LookupFailed
from relay.storage.domainchecks import DomainCheck, Requirement, Status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from relay.config import Config
    from relay.mail.signing import SigningKey
    from relay.resolver import Resolver
    from relay.storage.base import Store


@cache
def _suffixes() -> object:
    from publicsuffixlist import PublicSuffixList  # noqa: PLC0415 - 200 kB list, loaded once

    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """The domain's organisational domain (RFC 7489 3.2): one label below its public suffix."""
    found = _suffixes().privatesuffix(domain)  # type: ignore[attr-defined]
    return str(found) if found else domain


def status_of(requirements: Sequence[Requirement]) -> Status:
    """`verified` when all are ok; failing when an answered one is not; else unknown."""
    states = {r.state for r in requirements}
    if states & {"missing", "failing"}:
        return "failing"
    if "unknown" in states:
        return "unknown"
    return "verified"


async def _looked_up(
    name: str, what: str, lookup: Callable[[], Awaitable[Requirement]]
) -> Requirement:
    try:
        return await lookup()
    except LookupFailed as exc:
        return Requirement(name, "unknown", f"{what}: the DNS did not answer ({exc})")


class Checker:
    """Checks domains against DNS; the envelope domain's records are read once per checker."""

    def __init__(
        self,
        resolver: Resolver,
        keys: Sequence[SigningKey],
        *,
        envelope_domain: str,
        hostname: str,
        sending_ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> None:
        """Look up with `resolver`; `keys` are the relay's DKIM keys, all domains."""
        self.resolver = resolver
        self.keys = keys
        self.envelope_domain = envelope_domain
        self.hostname = hostname
        self.sending_ips = list(sending_ips)
        self._envelope: list[Requirement] | None = None

    async def check(self, account_id: str, domain: str, *, now: float) -> DomainCheck:
        """Every requirement of `domain`, and the status they make."""
        mine = [key for key in self.keys if key.domain == domain]
        found = [await self._dkim(key) for key in mine]
        if not mine:
            found.append(
                Requirement(
                    "dkim",
                    "failing",
                    f"no DKIM key is configured for {domain}: the relay cannot sign its mail",
                    f"optin-relay dkim keygen --domain {domain} --selector SELECTOR",
                )
            )
        found.append(await _looked_up("dmarc", "DMARC", lambda: self._dmarc(domain, bool(mine))))
        found += await self._envelope_requirements()
        return DomainCheck(account_id, domain, status_of(found), found, now)

    async def _dkim(self, key: SigningKey) -> Requirement:
        name = f"dkim {key.selector}"
        publish = txt_record(key.dns_name, key.public_record)

        async def lookup() -> Requirement:
            state = key_published(await self.resolver.txt(key.dns_name), key.public_record)
            found = {
                "ok": f"{key.dns_name} publishes the configured key",
                "missing": f"no record at {key.dns_name}",
                "failing": f"{key.dns_name} publishes another key than the configured one",
            }[state]
            return Requirement(name, state, found, None if state == "ok" else publish)

        return await _looked_up(name, key.dns_name, lookup)

    async def _dmarc(self, domain: str, signed: bool) -> Requirement:  # noqa: FBT001
        # The least a provider asks: a record, policy none. Where aggregate reports go (rua=)
        # is the domain owner's choice of a mailbox the relay cannot know.
        publish = txt_record(f"_dmarc.{domain}", "v=DMARC1; p=none")
        organisational = organisational_domain(domain)
        record, where = None, ""
        for candidate in dict.fromkeys((domain, organisational)):
            found = [r for r in await self.resolver.txt(f"_dmarc.{candidate}") if _is_dmarc(r)]
            if found:
                record, where = tags(found[0]), f"_dmarc.{candidate}"
                break
        if record is None:
            return Requirement("dmarc", "missing", f"no DMARC record for {domain}", publish)
        strict = record.get("adkim", "r").lower() == "s"
        policy = f"p={record.get('p', '(none given)')} at {where}"
        if not signed:
            return Requirement("dmarc", "failing", f"{policy}; the relay has no key to align")
        # The relay signs with d= the From domain itself: aligned, strict or relaxed.
        mode = "strict" if strict else "relaxed"
        return Requirement("dmarc", "ok", f"{policy}; the relay's d={domain} aligns ({mode})")

    async def _envelope_requirements(self) -> list[Requirement]:
        if self._envelope is None:
            self._envelope = [
                await _looked_up("envelope spf", "SPF", self._spf),
                await _looked_up("envelope mx", "MX", self._mx),
            ]
        return self._envelope

    async def _spf(self) -> Requirement:
        name, domain = "envelope spf", self.envelope_domain
        allowed = (
            " ".join(f"ip{ip.version}:{ip}" for ip in self.sending_ips) or f"a:{self.hostname}"
        )
        publish = txt_record(domain, f"v=spf1 {allowed} -all")
        records = [r for r in await self.resolver.txt(domain) if r.lower().startswith("v=spf1")]
        if not records:
            return Requirement(name, "missing", f"no SPF record at {domain}", publish)
        if len(records) > 1:
            return Requirement(name, "failing", f"{len(records)} SPF records at {domain}", publish)
        denied = [ip for ip in self.sending_ips if not _allows(records[0], ip)]
        if denied:
            shown = ", ".join(map(str, denied))
            return Requirement(
                name, "failing", f"{domain}'s SPF does not list {shown} (ip4:/ip6:)", publish
            )
        return Requirement(name, "ok", f"{domain}: {records[0]}")

    async def _mx(self) -> Requirement:
        domain = self.envelope_domain
        exchangers = await self.resolver.mx(domain)
        if not exchangers:
            return Requirement(
                "envelope mx",
                "missing",
                f"no MX for {domain}: bounces cannot come back",
                f"{domain}. IN MX 10 {self.hostname}.",
            )
        return Requirement("envelope mx", "ok", f"{domain} MX {', '.join(exchangers)}")


def _is_dmarc(record: str) -> bool:
    return record.replace(" ", "").upper().startswith("V=DMARC1")


def _allows(record: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an `ip4:`/`ip6:` mechanism of the SPF record covers `ip` (others not followed)."""
    for term in record.split()[1:]:
        qualifier, mechanism = (term[0], term[1:]) if term[0] in "+-~?" else ("+", term)
        kind, _, value = mechanism.partition(":")
        if qualifier != "+" or kind.lower() != f"ip{ip.version}" or not value:
            continue
        try:
            if ip in ipaddress.ip_network(value, strict=False):
                return True
        except ValueError:
            continue
    return False


async def check_all(
    config: Config, store: Store, *, domain: str | None = None, now: float
) -> list[DomainCheck]:
    """Check every account's From domains (or only `domain`); keep and return what was found.

    `domains check` runs it, and every relay with the `domain_auth` policy on at start and
    every `deliverability.recheck`.
    """
    from relay.mail.signing import load_keys  # noqa: PLC0415 - the keys of this config
    from relay.resolver import Resolver  # noqa: PLC0415

    checker = Checker(
        Resolver(config.dns),
        load_keys(config.dkim)[0],
        envelope_domain=config.relay_domain,
        hostname=config.hostname,
        sending_ips=config.deliverability.sending_ips,
    )
    kept = []
    for account in config.accounts:
        for name in account.from_domains:
            if domain is None or name == domain.lower():
                found = await checker.check(account.id, name, now=now)
                kept.append(await store.save_domain_check(found))
    return kept
