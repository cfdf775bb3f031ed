"""Every log event the code emits is documented in docs/log-events.md, and vice versa."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def emitted_events() -> set[str]:
    names = set()
    for path in [*ROOT.joinpath("relay").rglob("*.py"), *ROOT.joinpath("policies").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def documented_events() -> set[str]:
    text = ROOT.joinpath("docs", "log-events.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))


def test_every_emitted_event_is_documented():
    """An event name the code logs must have a row in docs/log-events.md."""
    emitted = emitted_events()
    assert len(emitted) > 20
    assert emitted - documented_events() == set()


def test_every_documented_event_exists():
    """The docs list no event the code never emits."""
    assert documented_events() - emitted_events() == set()


def test_event_names_are_snake_case():
    """Stable snake_case names."""
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in emitted_events())
