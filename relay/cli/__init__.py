"""The `optin-relay` command line.

Exit status: 0 success, 1 refused operation, 2 usage error, 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relay import __version__
from relay.cli import accounts as cli_accounts
from relay.cli import cases as cli_cases
from relay.cli import consent as cli_consent
from relay.cli import dkim as cli_dkim
from relay.cli import suppress as cli_suppress
from relay.clock import to_datetime
from relay.config import Config, load_config
from relay.configtypes import split_host_port
from relay.errors import ConfigError, RelayError
from relay.logging import configure, get_logger
from relay.passwords import hash_password

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from relay.storage.base import Store

    StoreRunner = Callable[[argparse.Namespace, Config, Store], Awaitable[int]]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

log = get_logger(__name__)


def _default_config() -> Path:
    return Path(os.environ.get("OPTIN_RELAY_CONFIG", "config/relay.yaml"))


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
    commands.add_parser("serve", parents=[common], help="run the relay")
    commands.add_parser("check-config", parents=[common], help="validate the configuration")
    commands.add_parser(
        "hash-password", parents=[common], help="read a password on stdin, print its hash"
    )
    sink = commands.add_parser(
        "sink", parents=[common], help="run a capture sink that writes messages to a folder"
    )
    sink.add_argument("--listen", default="127.0.0.1:2526", help="host:port (default %(default)s)")
    sink.add_argument("--dir", type=Path, default=Path("var/outbox"), help="where .eml files go")
    commands.add_parser(
        "dev-init",
        parents=[common],
        help="create the development TLS certificate named by the config, if missing",
    )
    cli_suppress.add_parser(commands, common)
    cli_dkim.add_parser(commands, common)
    cli_accounts.add_parser(commands, common)
    cli_consent.add_parser(commands, common)
    cli_cases.add_parsers(commands, common)
    queue = commands.add_parser("queue", parents=[common], help="inspect the delivery queue")
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    queue_list = queue_commands.add_parser("list", parents=[common], help="pending recipients")
    queue_list.add_argument("--limit", type=int, default=1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    configure(level="info", stream=sys.stdout if args.command in ("serve", "sink") else sys.stderr)
    config_path: Path = args.config or _default_config()
    # Commands that work on the store: each module's runner gets the args, config and store.
    store_commands: dict[str, StoreRunner] = {
        "suppress": cli_suppress.run,
        "accounts": cli_accounts.run,
        "consent": cli_consent.run,
        "complaints": cli_cases.ingest,
        "cases": cli_cases.run_cases,
        "stats": cli_cases.run_stats,
    }
    handlers: dict[str, Callable[[argparse.Namespace, Path], int]] = {
        "serve": _serve,
        "check-config": _check_config,
        "hash-password": _hash_password,
        "sink": _sink,
        "dev-init": _dev_init,
        "queue": _queue,
        "dkim": _dkim,
    }
    try:
        runner = store_commands.get(args.command)
        if runner is not None:
            return _with_store(config_path, lambda config, store: runner(args, config, store))
        return handlers[args.command](args, config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_REFUSED


def _serve(args: argparse.Namespace, config_path: Path) -> int:
    del args
    from relay.app import serve  # noqa: PLC0415 - keep light commands free of the server stack

    return asyncio.run(serve(config_path))


def _check_config(args: argparse.Namespace, config_path: Path) -> int:
    del args
    from relay.app import check_runtime  # noqa: PLC0415

    config = load_config(config_path)
    for warning in check_runtime(config):
        print(f"warning: {warning}", file=sys.stderr)
    listeners = len(config.smtp.listeners)
    print(f"{config_path}: OK ({len(config.accounts)} accounts, {listeners} listeners)")
    return EXIT_OK


def _hash_password(args: argparse.Namespace, config_path: Path) -> int:
    del args, config_path
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return EXIT_REFUSED
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return EXIT_REFUSED
    print(hash_password(password))
    return EXIT_OK


def _sink(args: argparse.Namespace, config_path: Path) -> int:
    del config_path
    from relay.sink import SinkHandler, start_sink  # noqa: PLC0415

    try:
        host, port = split_host_port(args.listen)
    except ValueError as exc:
        print(f"error: --listen: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> None:
        server, _ = await start_sink(SinkHandler(args.dir), host, port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())
    return EXIT_OK


def _dev_init(args: argparse.Namespace, config_path: Path) -> int:
    del args
    from relay.mail.signing import generate_key, make_key, write_key  # noqa: PLC0415
    from relay.tlsutil import write_self_signed  # noqa: PLC0415

    config: Config = load_config(config_path)
    files = config.smtp.tls
    if files is not None and not (files.certificate.exists() and files.private_key.exists()):
        write_self_signed(files.certificate, files.private_key, [config.hostname, "localhost"])
        print(f"wrote a self-signed development certificate to {files.certificate}")
    for item in config.dkim:
        if not item.private_key.exists():
            pem = generate_key(item.algorithm)
            write_key(item.private_key, pem)
            key = make_key(item.domain, item.selector, item.algorithm, pem)
            print(f"wrote a development DKIM key to {item.private_key} ({key.dns_name})")
    return EXIT_OK


def _with_store(config_path: Path, work: Callable[[Config, Store], Awaitable[int]]) -> int:
    """Open the configured store (migrated), run `work`, close it."""
    from relay.storage import open_store  # noqa: PLC0415

    config = load_config(config_path)

    async def run() -> int:
        store = open_store(config.storage.url)
        await store.open()
        try:
            await store.migrate()
            return await work(config, store)
        finally:
            await store.close()

    return asyncio.run(run())


def _dkim(args: argparse.Namespace, config_path: Path) -> int:
    if args.action == "keygen":
        return cli_dkim.keygen(args)
    config = load_config(config_path)
    if args.action == "show":
        return cli_dkim.show(config)
    return cli_dkim.check(config, args.domain)


def _queue(args: argparse.Namespace, config_path: Path) -> int:
    async def work(config: Config, store: Store) -> int:
        del config
        for entry in await store.queue(args.limit):
            next_try = to_datetime(entry.next_attempt).isoformat(timespec="seconds")
            print(
                f"{entry.message_id}\t{entry.account_id or '-'}\t<{entry.mail_from}>\t"
                f"<{entry.recipient}>\tattempts={entry.attempts}\tnext={next_try}\t"
                f"{entry.last_reply or ''}"
            )
        return EXIT_OK

    return _with_store(config_path, work)
