"""The command line: hash-password, dev-init, queue list, usage errors."""

from __future__ import annotations

import subprocess
import sys

import yaml
from conftest import config_data

from relay.passwords import verify_password

CLI = [sys.executable, "-m", "relay"]


def test_hash_password_reads_stdin():
    """hash-password prints an Argon2id hash that verifies the password it was given."""
    result = subprocess.run(
        [*CLI, "hash-password"], input="correct horse\n", capture_output=True, text=True, check=True
    )
    digest = result.stdout.strip()
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "correct horse")
    assert not verify_password(digest, "correct horse\n")
    assert "correct horse" not in result.stdout + result.stderr


def test_hash_password_refuses_empty():
    """An empty password is refused with exit 1."""
    result = subprocess.run(
        [*CLI, "hash-password"], input="\n", capture_output=True, text=True, check=False
    )
    assert result.returncode == 1


def test_usage_error_exits_2():
    """An unknown command is a usage error."""
    result = subprocess.run([*CLI, "no-such-command"], capture_output=True, text=True, check=False)
    assert result.returncode == 2


def test_help_loads_no_library_a_command_runs_on():
    """`optin-relay --help` loads neither the server's libraries nor pydantic, YAML or logging.

    Each command imports what it needs when it runs (the help of a command group that imported
    aiohttp and structlog at the top took 0.9 s instead of 0.2 s).
    """
    heavy = ["aiohttp", "aiosmtpd", "aiosmtplib", "aiosqlite", "asyncpg", "cryptography", "dkim"]
    heavy += ["jinja2", "pydantic", "structlog", "yaml"]
    code = (
        "import sys\n"
        "sys.argv = ['optin-relay', '--help']\n"
        "from relay.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines()[-1] == "[]"


def test_dev_init_writes_certificate(tmp_path, sqlite_url):
    """`dev-init` writes the config's TLS files (key mode 0600); check-config then passes."""
    data = config_data(
        store_url=sqlite_url,
        upstream_port=2526,
        tls_files=(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"),
    )
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(data))
    subprocess.run([*CLI, "dev-init", "--config", str(path)], check=True, capture_output=True)
    assert (tmp_path / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    subprocess.run([*CLI, "check-config", "--config", str(path)], check=True, capture_output=True)


async def test_queue_list_shows_pending(tmp_path, tls_files):
    """`queue list` prints each pending recipient with its attempts and last reply."""
    from relay.storage import NewMessage, open_store

    url = f"sqlite:///{tmp_path}/relay.db"
    store = open_store(url)
    await store.open()
    await store.migrate()
    await store.spool(
        NewMessage("Q1", "acme", "news@acme.example", ("a@example.net",), b"x", 1_800_000_000.0)
    )
    await store.close()
    path = tmp_path / "relay.yaml"
    path.write_text(
        yaml.safe_dump(config_data(store_url=url, upstream_port=25, tls_files=tls_files))
    )
    result = subprocess.run(
        [*CLI, "queue", "list", "--config", str(path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith(
        "Q1\tacme\tqueued\t<news@acme.example>\t<a@example.net>\tattempts=0"
    )
