"""Which release may run on which schema, and when to migrate it.

Migrations are expand/contract: a release only adds (tables, columns with defaults or NULL),
so the previous release keeps working on the migrated schema while a fleet is
upgraded node by node; what a release stops using is dropped one release later. A step that
would break an older release records the oldest release that may still run (`FLOORS`): the
schema keeps the highest floor of its steps (`schema_info.min_version`), and a node older than
that refuses to start, naming the release to install, before it touches any data.

`storage.migrate`: `auto` migrates at start-up (one node at a time: the backends take a lock, so
nodes starting together apply each step once); `never` refuses to start while steps are pending,
for fleets that migrate once, as an explicit step (`optin-relay migrate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay import __version__
from relay.errors import SchemaError
from relay.storage.migrations import FLOORS, STEPS

MIN_VERSION = "min_version"  # the key of schema_info that holds the floor

if TYPE_CHECKING:
    from relay.storage.base import Store
    from relay.storage.records import SchemaState


def version_key(version: str) -> tuple[int, ...]:
    """`0.2.0` as (0, 2, 0), for comparison; a suffix after the numbers is ignored."""
    numbers = []
    for part in version.split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))] if part else ""
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def floor_of(steps: set[int] | frozenset[int], recorded: str | None) -> str:
    """The floor to record once `steps` are applied: theirs, or a newer release's if higher."""
    floors = [FLOORS[step] for step in steps if step in FLOORS]
    if recorded:
        floors.append(recorded)
    return max(floors, key=version_key, default="0.0.0")


def refusal(state: SchemaState) -> str | None:
    """Why this code must not run on a schema in `state`, or None."""
    if state.min_version and version_key(__version__) < version_key(state.min_version):
        return (
            f"the database schema needs optin-relay {state.min_version} or later (this is"
            f" {__version__}): install {state.min_version} or later on this node"
        )
    return None


def describe(steps: list[int]) -> list[str]:
    """One line per step: its number and what it adds."""
    return [f"{step:>3}  {STEPS[step]}" for step in steps]


async def prepare(store: Store, mode: str) -> SchemaState:
    """Check the schema before serving; migrate it when `mode` is `auto`.

    Raises SchemaError when this code may not run on the schema (too old for it, or steps
    pending with `mode: never`).
    """
    state = await store.schema_state()
    why = refusal(state)
    if why is not None:
        raise SchemaError(why)
    if not state.pending:
        return state
    if mode != "auto":
        raise SchemaError(
            f"the database schema lacks {len(state.pending)} migration steps of optin-relay"
            f" {__version__} ({', '.join(map(str, state.pending))}), and storage.migrate is"
            " never: run `optin-relay migrate` once, then start the nodes"
        )
    await store.migrate()
    state = await store.schema_state()
    why = refusal(state)
    if why is not None:  # a newer release migrated meanwhile
        raise SchemaError(why)
    return state
