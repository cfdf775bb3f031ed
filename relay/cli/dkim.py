"""`optin-relay dkim keygen | show | check`: DKIM keys and their DNS records."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, load
from relay.mail.dnsrecords import key_published, txt_record

if TYPE_CHECKING:
    import argparse

    from relay.config import Config


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register `dkim` and its actions."""
    parser = commands.add_parser("dkim", parents=[common], help="DKIM keys and DNS records")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write a new private key, print its DNS record")
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument(
        "--algorithm", choices=("rsa-sha256", "ed25519-sha256"), default="rsa-sha256"
    )
    keygen.add_argument("--bits", type=int, default=2048, choices=(2048, 3072, 4096))
    keygen.add_argument(
        "--out", type=Path, default=None, help="key file (default: DOMAIN.SELECTOR.pem here)"
    )
    actions.add_parser("show", parents=[common], help="DNS records of the configured keys")
    check = actions.add_parser("check", parents=[common], help="compare published records")
    check.add_argument("--domain", required=True)
    parser.set_defaults(handler=run)


def lookup_txt(name: str) -> list[str]:
    """The TXT strings published at `name` (each record's strings joined)."""
    import dns.resolver  # noqa: PLC0415 - loaded by the one command that looks DNS up

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=10)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(record.strings).decode("ascii", "replace") for record in answer]


def keygen(args: argparse.Namespace) -> int:
    """Write the key (mode 0600, never over an existing file) and print its record."""
    from relay.mail.signing import generate_key, make_key, write_key  # noqa: PLC0415

    out: Path = args.out or Path(f"{args.domain}.{args.selector}.pem")
    pem = generate_key(args.algorithm, args.bits)
    key = make_key(args.domain, args.selector, args.algorithm, pem)
    try:
        write_key(out, pem)
    except FileExistsError:
        print(f"error: {out} exists; choose another file or selector", file=sys.stderr)
        return EXIT_REFUSED
    print(f"# private key written to {out} (mode 0600)")
    print("# publish this record, then add the key to `dkim` in the configuration:")
    print(txt_record(key.dns_name, key.public_record))
    return EXIT_OK


def show(config: Config) -> int:
    """The records of every configured key."""
    from relay.mail.signing import load_keys  # noqa: PLC0415

    keys, _ = load_keys(config.dkim)
    for key in keys:
        print(txt_record(key.dns_name, key.public_record))
    return EXIT_OK


def check(config: Config, domain: str) -> int:
    """Whether each configured key of `domain` is published as configured."""
    import dns.exception  # noqa: PLC0415

    from relay.mail.signing import load_keys  # noqa: PLC0415

    keys = [key for key in load_keys(config.dkim)[0] if key.domain == domain.lower()]
    if not keys:
        print(f"error: no key configured for {domain}", file=sys.stderr)
        return EXIT_REFUSED
    status = EXIT_OK
    for key in keys:
        try:
            published = lookup_txt(key.dns_name)
        except dns.exception.DNSException as exc:
            print(f"{key.dns_name}\tlookup failed: {exc}")
            status = EXIT_REFUSED
            continue
        state = key_published(published, key.public_record)
        print(
            f"{key.dns_name}\t"
            + {
                "ok": "ok",
                "missing": "not published",
                "failing": "mismatch: the published key is not the configured one",
            }[state]
        )
        if state != "ok":
            status = EXIT_REFUSED
    return status


def run(args: argparse.Namespace, config_path: Path) -> int:
    """Carry out one `dkim` action."""
    if args.action == "keygen":
        return keygen(args)
    config = load(config_path)
    if args.action == "show":
        return show(config)
    return check(config, args.domain)
