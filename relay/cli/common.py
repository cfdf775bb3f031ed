"""What every command group shares: exit codes, the config path, the store, audit and output.

Start-up time matters for a command line: this module, and the top of every command group,
import only the standard library. What a command needs (the configuration models, the store,
the server) is imported when that command runs.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from relay.clock import to_datetime

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

    from relay.config import Config
    from relay.storage.base import Store

    StoreRunner = Callable[[argparse.Namespace, Config, Store], Awaitable[int]]
    Handler = Callable[[argparse.Namespace, Path], int]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


def default_config() -> Path:
    """`$OPTIN_RELAY_CONFIG`, else `config/relay.yaml`."""
    return Path(os.environ.get("OPTIN_RELAY_CONFIG", "config/relay.yaml"))


def load(config_path: Path) -> Config:
    """The validated configuration (raises ConfigError listing every problem)."""
    from relay.configfile import load_config  # noqa: PLC0415 - pydantic models cost start-up time

    return load_config(config_path)


def with_store(
    config_path: Path, work: Callable[[Config, Store], Awaitable[int]], *, prepare: bool = True
) -> int:
    """Open the configured store (migrated, as `storage.migrate` says), run `work`, close it.

    `prepare=False`: as it is, for the commands that look at the schema itself (`migrate`).
    """
    import asyncio  # noqa: PLC0415 - `--help` and usage errors need no event loop

    from relay.storage import open_store, schema  # noqa: PLC0415 - the driver in use only

    config = load(config_path)

    async def run() -> int:
        store = open_store(config.storage.url)
        await store.open()
        try:
            if prepare:
                await schema.prepare(store, config.storage.migrate)
            return await work(config, store)
        finally:
            await store.close()

    return asyncio.run(run())


def on_store(runner: StoreRunner) -> Handler:
    """A command handler that runs `runner` with the configured store."""

    def handler(args: argparse.Namespace, config_path: Path) -> int:
        return with_store(config_path, lambda config, store: runner(args, config, store))

    return handler


def actor() -> str:
    """Who runs the command, for audit trails."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def when(timestamp: float | None) -> str:
    """A stored time as ISO 8601 in UTC, to the second ("-" for none)."""
    return "-" if timestamp is None else to_datetime(timestamp).isoformat(timespec="seconds")


class Progress:
    """A progress bar on a terminal; a line every 10% (or 100,000 rows) otherwise."""

    def __init__(self, total: int | None, stream: TextIO) -> None:
        """Report on `stream`, out of `total` rows when known."""
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self._next_line = 0.1

    def update(self, done: int, added: int) -> None:
        """Report `done` rows read, `added` new."""
        if self.tty and self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            self.stream.write(f"\r[{bar:<30}] {share:4.0%} {done}/{self.total} rows, {added} new")
            self.stream.flush()
        elif self.total and done / self.total >= self._next_line:
            self.stream.write(
                f"{done}/{self.total} rows ({done * 100 // self.total}%), {added} new\n"
            )
            self._next_line += 0.1
        elif not self.total and done % 100_000 == 0:
            self.stream.write(f"{done} rows, {added} new\n")

    def close(self) -> None:
        """End the bar's line."""
        if self.tty and self.total:
            self.stream.write("\n")
