"""`serve`, `check-config`, `hash-password`, `sink` and `dev-init`: running the relay.

Like every command group, it imports what a command needs when the command runs.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, load
from relay.errors import ConfigError

if TYPE_CHECKING:
    import argparse

    from relay.config import Config


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Register the commands that run the relay and its sink."""
    serve = commands.add_parser("serve", parents=[common], help="run the relay")
    serve.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop (default %(default)s: about 10%% less CPU per message)",
    )
    serve.add_argument(
        "--web-listen",
        default=None,
        metavar="HOST:PORT",
        help="this process's HTTP address, instead of web.listen (several processes, one config)",
    )
    serve.set_defaults(handler=_serve)
    commands.add_parser(
        "check-config", parents=[common], help="validate the configuration"
    ).set_defaults(handler=_check_config)
    commands.add_parser(
        "hash-password", parents=[common], help="read a password on stdin, print its hash"
    ).set_defaults(handler=_hash_password)
    sink = commands.add_parser(
        "sink", parents=[common], help="run a capture sink that writes messages to a folder"
    )
    sink.add_argument("--listen", default="127.0.0.1:2526", help="host:port (default %(default)s)")
    sink.add_argument("--dir", type=Path, default=Path("var/outbox"), help="where .eml files go")
    sink.set_defaults(handler=_sink)
    commands.add_parser(
        "dev-init",
        parents=[common],
        help="create the development TLS certificate named by the config, if missing",
    ).set_defaults(handler=_dev_init)


def _serve(args: argparse.Namespace, config_path: Path) -> int:
    from relay.app import serve  # noqa: PLC0415 - keep light commands free of the server stack

    running = serve(config_path, web_listen=args.web_listen)
    if args.event_loop == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.run(running)
    import asyncio  # noqa: PLC0415

    return asyncio.run(running)


def _check_config(args: argparse.Namespace, config_path: Path) -> int:
    del args
    from relay.app import check_runtime  # noqa: PLC0415
    from relay.runtime import unsigned_own_mail  # noqa: PLC0415

    config = load(config_path)
    for warning in check_runtime(config):
        print(f"warning: {warning}", file=sys.stderr)
    problems = unsigned_own_mail(config)
    if problems:
        raise ConfigError(problems)
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
    from relay.passwords import hash_password  # noqa: PLC0415

    print(hash_password(password))
    return EXIT_OK


def _sink(args: argparse.Namespace, config_path: Path) -> int:
    del config_path
    from relay.configtypes import split_host_port  # noqa: PLC0415
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

    import asyncio  # noqa: PLC0415

    asyncio.run(run())
    return EXIT_OK


def _dev_init(args: argparse.Namespace, config_path: Path) -> int:
    del args
    from relay.mail.signing import generate_key, make_key, write_key  # noqa: PLC0415
    from relay.tlsutil import write_self_signed  # noqa: PLC0415

    config: Config = load(config_path)
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
