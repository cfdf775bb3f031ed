"""`optin-relay migrate [--check]`: the schema as an explicit step of an upgrade.

`--check` lists the steps this release would apply and exits 1 when there are any (0 when the
schema is current); without it, the steps are applied (under the backends' lock: safe while
nodes run, and from two places at once). Either way it says when this release is too old for
the schema (exit 1). See relay.storage.schema for the rules.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from relay import __version__
from relay.cli.common import EXIT_OK, EXIT_REFUSED, with_store

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from relay.config import Config
    from relay.storage.base import Store


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `migrate`."""
    migrate = commands.add_parser(
        "migrate", parents=[common], help="bring the database schema up to this release"
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="only list the pending steps; exit 1 when there are any",
    )
    migrate.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace, config_path: Path) -> int:
    async def work(config: Config, store: Store) -> int:
        del config
        return await run(store, check=args.check)

    return with_store(config_path, work, prepare=False)


async def run(store: Store, *, check: bool) -> int:
    """Check or apply the migration steps; the exit status."""
    from relay.logging import get_logger  # noqa: PLC0415 - structlog: only when run
    from relay.storage.schema import describe, refusal  # noqa: PLC0415

    log = get_logger(__name__)
    state = await store.schema_state()
    why = refusal(state)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_REFUSED
    pending = state.pending
    if not pending:
        print(f"schema current: {len(state.applied)} steps, for optin-relay {__version__}")
        if state.newer:
            print(f"steps of a newer release: {', '.join(map(str, state.newer))}")
        return EXIT_OK
    if check:
        print(f"{len(pending)} steps pending for optin-relay {__version__}:")
        print("\n".join(describe(pending)))
        return EXIT_REFUSED
    await store.migrate()
    after = await store.schema_state()
    print(f"applied {len(pending)} steps:")
    print("\n".join(describe(pending)))
    log.info("schema_migrated", steps=pending, version=__version__, min_version=after.min_version)
    return EXIT_OK
