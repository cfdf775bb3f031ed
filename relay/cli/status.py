"""`optin-relay status [--json]`: one view of the cluster, from any node (relay.cluster).

The relay processes heard from in the last hour (a silent one is `missing`), the leases each
holds, the queue by state with its oldest message, each webhook endpoint's lag, the schema.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, EXIT_REFUSED, with_store

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from relay.config import Config
    from relay.storage.base import Store


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register `status`."""
    status = commands.add_parser(
        "status", parents=[common], help="the nodes on the store, their leases, backlog and lag"
    )
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace, config_path: Path) -> int:
    async def work(config: Config, store: Store) -> int:
        return await run(config, store, as_json=args.json)

    return with_store(config_path, work, prepare=False)


async def run(config: Config, store: Store, *, as_json: bool) -> int:
    """Print the snapshot; the exit status."""
    from relay.cluster import read_status, render  # noqa: PLC0415
    from relay.storage.schema import describe, refusal  # noqa: PLC0415

    schema = await store.schema_state()
    if schema.pending:
        print(
            f"error: the schema lacks {len(schema.pending)} steps of this release; run"
            " `optin-relay migrate` (or use a node of the release that migrated it):\n"
            + "\n".join(describe(schema.pending)),
            file=sys.stderr,
        )
        return EXIT_REFUSED
    why = refusal(schema)
    if why is not None:
        print(f"warning: {why}", file=sys.stderr)
    status = await read_status(store, config, schema, time.time())
    print(json.dumps(status.as_json(), indent=2) if as_json else render(status))
    return EXIT_OK
