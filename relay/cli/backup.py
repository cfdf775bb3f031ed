"""`optin-relay backup PATH`: a consistent copy of the SQLite store, taken while the relay runs.

The copy is one snapshot of every committed transaction (SQLite's online backup API) and is
checked before it is renamed into place; an existing PATH is never overwritten. PostgreSQL is
backed up with its own tools (docs/operations.md, Backups).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, with_store

if TYPE_CHECKING:
    import argparse

    from relay.config import Config
    from relay.storage.base import Store


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `backup`."""
    backup = commands.add_parser(
        "backup", parents=[common], help="copy the SQLite store to PATH while the relay runs"
    )
    backup.add_argument("path", type=Path, help="the copy (must not exist yet)")
    backup.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace, config_path: Path) -> int:
    target: Path = args.path.absolute()
    if target.exists():
        print(f"error: {target} exists; a backup never overwrites a file", file=sys.stderr)
        return EXIT_REFUSED
    if not target.parent.is_dir():
        print(f"error: no folder {target.parent}", file=sys.stderr)
        return EXIT_REFUSED

    async def work(config: Config, store: Store) -> int:
        del config
        return await run(store, target)

    return with_store(config_path, work, prepare=False)


async def run(store: Store, target: Path) -> int:
    """Take the copy, say how large it is and how long it took; the exit status."""
    from relay.logging import get_logger  # noqa: PLC0415 - structlog: only when run

    log = get_logger(__name__)
    started = time.monotonic()
    size = await store.backup(target)
    seconds = time.monotonic() - started
    log.info("store_backed_up", path=str(target), bytes=size, seconds=round(seconds, 3))
    print(f"backed up to {target}: {size / 1048576:.1f} MiB in {seconds:.1f} s")
    return EXIT_OK
