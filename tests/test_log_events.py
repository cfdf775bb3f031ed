"""Every log event the code emits is documented in docs/log-events.md, and vice versa."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import warnings

from conftest import ROOT

from relay.logging import configure

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
            elif (  # a processor naming the event: event_dict["event"] = "name"
                isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Subscript)
                and isinstance(node.targets[0].slice, ast.Constant)
                and node.targets[0].slice.value == "event"
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                names.add(node.value.value)
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


def test_library_logs_and_warnings_come_out_as_json_events():
    """Records of libraries (aiohttp, asyncio) and Python warnings are JSON library_log lines."""
    buffer = io.StringIO()
    configure(level="info", stream=buffer)  # here: pytest swaps warning hooks for each phase
    try:
        raise RuntimeError("handler blew up")  # noqa: TRY301
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    logging.getLogger("aiohttp.server").info("below the threshold: not written")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", RuntimeWarning, stacklevel=1)
    events = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["library_log", "library_log"]
    crash, warning = events
    assert (crash["logger"], crash["message"], crash["level"]) == (
        "aiohttp.server",
        "Error handling request",
        "error",
    )
    assert "RuntimeError: handler blew up" in crash["exception"]
    assert (warning["logger"], warning["level"]) == ("py.warnings", "warning")
    assert "a library's warning" in warning["message"]
