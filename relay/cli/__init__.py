"""The `optin-relay` command line.

Exit status: 0 success, 1 refused operation, 2 usage error, 78 configuration error.
One module per command group (`relay/cli/*.py`), each registering its parsers and a handler;
`common` holds what they share. Each imports what a command needs only when it runs, so
`optin-relay --help` and the store commands start fast (bench/cli_startup.py measures it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# optin-relay uses no pydantic plugins; looking their entry points up costs every command about
# 20 ms of start-up (an operator's own setting of the variable wins).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from relay import __version__
from relay.cli import (
    accounts,
    backup,
    cases,
    consent,
    dkim,
    domains,
    explain,
    migrate,
    policy,
    queue,
    service,
    status,
    suppress,
    webhooks,
)
from relay.cli.common import EXIT_CONFIG, EXIT_REFUSED, default_config
from relay.errors import ConfigError, RelayError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $OPTIN_RELAY_CONFIG, else config/relay.yaml)",
    )
    parser = argparse.ArgumentParser(prog="optin-relay", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"optin-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service.add_parsers(commands, common)
    queue.add_parser(commands, common)
    explain.add_parser(commands, common)
    policy.add_parser(commands, common)
    suppress.add_parser(commands, common)
    dkim.add_parser(commands, common)
    domains.add_parser(commands, common)
    accounts.add_parser(commands, common)
    consent.add_parser(commands, common)
    cases.add_parsers(commands, common)
    webhooks.add_parser(commands, common)
    migrate.add_parser(commands, common)
    backup.add_parser(commands, common)
    status.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    from relay.logging import configure  # noqa: PLC0415 - not needed for --help or a usage error

    configure(level="info", stream=sys.stdout if args.command in ("serve", "sink") else sys.stderr)
    config_path: Path = args.config or default_config()
    try:
        status: int = args.handler(args, config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_REFUSED
    return status
