"""`optin-relay` as the tests run it: in this process (fast), or as a real subprocess.

In this process, `relay.cli.main` runs in a thread of its own (it starts its own event loop,
which must not be a test's), with its own standard input, output and error, and the test's
logging configuration is put back afterwards (a command configures logging for itself). Each
command group keeps at least one test that runs the real `python -m relay` as a subprocess.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import structlog

from relay.cli import main

CLI = [sys.executable, "-m", "relay"]
TIMEOUT = 120


class _ThreadStream(io.TextIOBase):
    """The command thread's writes go to `mine`, any other thread's to `others`.

    Another thread is a relay the test runs in this process, logging meanwhile; its lines go
    where they went before.
    `redirect_stdout` swaps the stream for the whole process, and the command configures the
    process's logging to it: without this, a relay's line written while a command ran landed
    in the command's captured output (a test reading that output failed now and then).
    """

    def __init__(self, mine: io.StringIO, others: Any) -> None:
        self.mine = mine
        self.others = others
        self.thread = threading.get_ident()

    def write(self, text: str) -> int:
        """Write `text` where its thread's output goes."""
        target = self.mine if threading.get_ident() == self.thread else self.others
        return int(target.write(text))

    def flush(self) -> None:
        """Flush the other threads' stream (the command's is a buffer)."""
        self.others.flush()

    def writable(self) -> bool:
        """A stream one writes to."""
        return True


def run_cli(
    *args: str, stdin: str | None = None, check: bool = True, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `optin-relay ARGS`; the result is what `subprocess.run` would give."""
    if process:
        return subprocess.run(
            [*CLI, *args], input=stdin, capture_output=True, text=True, check=check, timeout=TIMEOUT
        )
    out, err = io.StringIO(), io.StringIO()
    status: list[int] = []

    def command() -> None:
        saved = structlog.get_config()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        stdin_before = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
        try:
            with (
                redirect_stdout(_ThreadStream(out, sys.stdout)),
                redirect_stderr(_ThreadStream(err, sys.stderr)),
            ):
                try:
                    status.append(main(list(args)))
                except SystemExit as exc:  # argparse: --help, usage errors
                    status.append(exc.code if isinstance(exc.code, int) else int(bool(exc.code)))
        finally:
            sys.stdin = stdin_before
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)

    thread = threading.Thread(target=command, name="optin-relay-cli")
    thread.start()
    thread.join(TIMEOUT)
    assert status, f"optin-relay {' '.join(args)} did not finish within {TIMEOUT} s"
    result = subprocess.CompletedProcess([*CLI, *args], status[0], out.getvalue(), err.getvalue())
    if check:
        result.check_returncode()
    return result
