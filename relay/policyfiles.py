"""Where policies live: `policies/<name>.py`, found by name. The one policy loader.

A policy module holds a pydantic `Settings` model and a `Policy` class whose `name` is the
module's name. The config validates `policies.<name>` with that `Settings`; the pipeline
builds that `Policy` (see `relay.policy` and docs/policies.md).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from types import ModuleType

_POLICY_NAME = re.compile(r"[a-z][a-z0-9_]*")


def policy_module(name: str) -> ModuleType:
    """The module `policies.<name>`.

    Raises LookupError for a name that is not a policy, or a module that does not hold one.
    """
    if not _POLICY_NAME.fullmatch(name):
        raise LookupError(f"not a policy name: {name!r}")
    try:
        module = importlib.import_module(f"policies.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"policies.{name}":
            raise
        raise LookupError(f"no policy named {name!r} in policies/") from exc
    policy = getattr(module, "Policy", None)
    settings = getattr(module, "Settings", None)
    if not (
        isinstance(policy, type)
        and isinstance(settings, type)
        and issubclass(settings, BaseModel)
        and callable(getattr(policy, "on_rcpt", None))
    ):
        raise LookupError(f"policies/{name}.py holds no Policy and Settings")  # noqa: TRY004
    if getattr(policy, "name", None) != name:
        raise LookupError(f"policies/{name}.py names its Policy {getattr(policy, 'name', None)!r}")
    return module


def policy_names() -> list[str]:
    """Every policy module in `policies/`, by name."""
    package = importlib.import_module("policies")  # by name, like each policy in it
    found = pkgutil.iter_modules(package.__path__)
    return sorted(info.name for info in found if not info.name.startswith("_"))
