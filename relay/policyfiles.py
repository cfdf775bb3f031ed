"""Where policies live and which run, in what order: the one policy loader.

A policy is `policies/<name>.py`, holding a pydantic `Settings` model and a `Policy` class whose
`name` is the module's name. The config validates `policies.<name>` with that `Settings`; the
pipeline builds each `Policy` in the order found here (see `relay.policy` and docs/policies.md),
which each policy declares for itself: `required`, `after` and `before`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from types import ModuleType

# The package of policies, loaded by name at run time: the core names no policy in its imports.
_PACKAGE = "policies"
_POLICY_NAME = re.compile(r"[a-z][a-z0-9_]*")


def policy_module(name: str) -> ModuleType:
    """The module `policies.<name>`.

    Raises LookupError for a name that is not a policy, or a module that does not hold one.
    """
    if not _POLICY_NAME.fullmatch(name):
        raise LookupError(f"not a policy name: {name!r}")
    try:
        module = importlib.import_module(f"{_PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{_PACKAGE}.{name}":
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
    package = importlib.import_module(_PACKAGE)
    found = pkgutil.iter_modules(package.__path__)
    return sorted(info.name for info in found if not info.name.startswith("_"))


EVERY_OTHER = "*"  # in `after` / `before`: every policy that does not itself name "*" there


def running_policies(configured: list[str]) -> list[ModuleType]:
    """The policy modules that run for a config naming `configured`, in their declared order.

    That is every required policy and every configured one. Declarations order them; among the
    policies they leave unordered, required ones the config does not name come first, then the
    config's order. Raises LookupError for a name that is no policy and ValueError when the
    declarations form a cycle.
    """
    modules = {name: policy_module(name) for name in configured}
    for name in policy_names():
        if name not in modules:
            module = policy_module(name)
            if getattr(module.Policy, "required", False):
                modules[name] = module
    names = [name for name in modules if name not in configured] + list(configured)
    return [modules[name] for name in order_names(names, modules)]


def order_names(names: list[str], modules: dict[str, ModuleType]) -> list[str]:
    """Order `names` by their policies' `after` / `before`; ties keep the given order."""

    def declared(name: str, side: str) -> tuple[str, ...]:
        return tuple(getattr(modules[name].Policy, side, ()))

    def expand(targets: tuple[str, ...], side: str) -> set[str]:
        if EVERY_OTHER in targets:
            return {other for other in names if EVERY_OTHER not in declared(other, side)}
        return {target for target in targets if target in modules}

    earlier: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        earlier[name] |= expand(declared(name, "after"), "after") - {name}
        for later in expand(declared(name, "before"), "before") - {name}:
            earlier[later].add(name)
    ordered: list[str] = []
    waiting = list(names)
    while waiting:
        ready = next((name for name in waiting if earlier[name] <= set(ordered)), None)
        if ready is None:
            cycle = ", ".join(waiting)
            raise ValueError(f"policies {cycle}: their after/before declarations form a cycle")
        ordered.append(ready)
        waiting.remove(ready)
    return ordered
