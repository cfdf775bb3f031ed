"""`make run` in a scratch folder: relay and sink start; swaks (AUTH LOGIN, STARTTLS) works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from email import message_from_bytes

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow
DEV_PORTS = (2525, 2465, 2526, 8025)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def workdir(tmp_path):
    """The files `make run` needs, in a scratch folder sharing this checkout's .venv.

    `make test` has just installed that venv, so `make run` must not install again (an install
    from the scratch folder would point the shared venv at files that are about to vanish).
    """
    stamp = ROOT / ".venv" / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        pytest.fail("run the suite through `make test` (the .venv install stamp is stale)")
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def test_make_run_then_swaks(workdir):
    """A message sent with swaks lands in var/outbox with a Received header, body intact."""
    swaks = shutil.which("swaks")
    assert swaks is not None, "swaks is not installed (`make test` installs it: .ci/bootstrap)"
    busy = [port for port in DEV_PORTS if not port_free(port)]
    assert not busy, f"the dev ports {busy} are in use (is `make run` already running?)"
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        started = set()
        while not {"relay_started", "sink_started"} <= started:
            assert time.monotonic() < deadline, "\n".join(lines)
            line = proc.stdout.readline().decode(errors="replace")
            assert line, "make run exited:\n" + "\n".join(lines)
            lines.append(line.rstrip())
            if line.startswith("{"):
                started.add(json.loads(line)["event"])
        assert (workdir / "var" / "tls" / "cert.pem").exists()
        body = "Hello from swaks.\n.leading dot line\nLast line."
        result = subprocess.run(
            [
                swaks,
                "--server",
                "127.0.0.1:2525",
                "--tls",
                "--auth",
                "LOGIN",
                "--auth-user",
                "dev",
                "--auth-password",
                "dev-password",
                "--from",
                "news@example.com",
                "--to",
                "someone@example.net",
                "--header",
                "Subject: make run check",
                "--body",
                body,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0 Authentication successful" in result.stdout
        outbox = workdir / "var" / "outbox"
        deadline = time.monotonic() + 30
        while not list(outbox.glob("*.eml")):
            assert time.monotonic() < deadline, "nothing reached var/outbox"
            time.sleep(0.1)
        (eml,) = outbox.glob("*.eml")
        raw = eml.read_bytes()
        message = message_from_bytes(raw)
        assert message["Delivered-To"] == "someone@example.net"
        received = message.get_all("Received")
        assert "by relay.dev.example (optin-relay) with ESMTPSA" in received[0]
        header_names = [name for name, _ in message.items()]
        assert header_names.index("Received") < header_names.index("From")
        assert message.get_payload().replace("\r\n", "\n").startswith(body)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
