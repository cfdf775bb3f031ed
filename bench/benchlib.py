"""Helpers shared by the benchmarks (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Iterator


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def sink_command(port: int, backlog: int = 256) -> list[str]:
    """Postfix's smtp-sink on 127.0.0.1:`port` (as root it needs a user to switch to)."""
    command = ["smtp-sink", f"127.0.0.1:{port}", str(backlog)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    return command


def taskset(cpus: set[int] | None) -> list[str]:
    """The command prefix that runs a program (and all it starts) on `cpus` only; none for None."""
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of running process `pid` on `cpus` from now on (threads it starts inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def start_sink(port: int, backlog: int = 256) -> subprocess.Popen[bytes]:
    """Postfix's smtp-sink on 127.0.0.1:`port`, once it accepts connections."""
    sink = subprocess.Popen(sink_command(port, backlog))
    try:
        wait_port(port)
    except SystemExit:
        stop(sink)
        raise
    return sink


def smtp_source(
    port: int, messages: int, sessions: int, size: int, cpus: set[int] | None = None
) -> float:
    """Postfix's smtp-source, one message per session (on `cpus`); the seconds it took."""
    started = time.monotonic()
    subprocess.run(
        [
            *taskset(cpus),
            "smtp-source",
            *("-s", str(sessions), "-m", str(messages), "-l", str(size)),
            *("-f", "news@bench.example", "-t", "reader@example.net"),
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return time.monotonic() - started


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds a process has used so far (from /proc).

    With `reaped`, also what its children that have ended used (once it waited for them).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu(parent: int) -> float:
    """CPU seconds used so far by the running children of `parent` (from /proc)."""
    return sum(seconds for _, ppid, seconds in _processes() if ppid == parent)


FULL_POLICY_LIMITS = {
    "messages_per_hour": 100_000_000,
    "recipients_per_hour": 100_000_000,
    "per_domain_per_hour": 100_000_000,
    "recipients_per_message": 100_000,
    "suspicious_broadcast": 100_000_000,
    "suppression_violations": 100_000_000,
    # Load tools send one message to the same readers again and again: each copy is still
    # numbered (the policy's cost is measured), within a window short enough that none is
    # refused and the count stays as small as real traffic's.
    "repeat_per_recipient": 1000,
    "repeat_window": 0.001,
}


def relay_config(
    work: Path,
    *,
    listener: dict[str, Any],
    sink_port: int,
    web_port: int,
    storage: str | None = None,
    password: str = "bench-password",  # noqa: S107 - a benchmark's throwaway account
    full_policy: bool = False,
    delivery: dict[str, Any] | None = None,
    log_level: str = "warning",
    name: str = "relay",
    key: Path | None = None,
    **smtp: Any,
) -> Path:
    """A relay configuration in `work`: account `bench` (DKIM for bench.example), sink upstream.

    `full_policy` turns on what the stock account leaves off: consent enforced (the recipients
    need opt-in records: see `seed_store`) and every rate limit set (high, so none refuses).
    """
    from relay.mail.signing import generate_key, write_key  # noqa: PLC0415 - after sys.path
    from relay.passwords import hash_password  # noqa: PLC0415

    if key is None:
        key = work / "bench.example.pem"
        if not key.exists():
            write_key(key, generate_key("rsa-sha256"))
    account: dict[str, Any] = {
        "id": "bench",
        "username": "bench",
        "password_hash": hash_password(password),
        "from_domains": ["bench.example"],
        "brand": {"name": "Bench", "postal_address": "1 Bench Street"},
        # smtp-source sends one message to one recipient again and again (see FULL_POLICY_LIMITS).
        "limits": {"repeat_per_recipient": 1000, "repeat_window": 0.001},
    }
    if full_policy:
        account |= {"consent": "enforce", "limits": FULL_POLICY_LIMITS}
    config = {
        "hostname": "relay.bench.example",
        "smtp": {"listeners": [listener], "max_connections_per_ip": 5000, **smtp},
        "upstream": {"host": "127.0.0.1", "port": sink_port, "tls": "none", "connections": 8},
        "delivery": {"poll_interval": 0.05, "batch": 200, **(delivery or {})},
        "storage": {"url": storage or f"sqlite:///{work}/relay.db"},
        "web": {"listen": f"127.0.0.1:{web_port}", "public_url": "https://relay.bench.example"},
        "tokens": {"keys": ["bench-token-key-0123456789abcdef0123456789"]},
        "dkim": [{"domain": "bench.example", "selector": "bench", "private_key": str(key)}],
        "log_level": log_level,
        "accounts": [account],
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Storage:
    """A fresh store for one measurement: a SQLite file in `work`, or a new PostgreSQL schema."""

    def __init__(self, work: Path, url: str) -> None:
        """`url`: "sqlite", or a postgresql:// URL (a schema of its own is added)."""
        self.kind = "sqlite" if url == "sqlite" else "postgresql"
        self._base = url
        self._work = work
        self._made: list[str] = []

    def fresh(self) -> str:
        """The URL of a store nothing has used yet."""
        tag = os.urandom(4).hex()
        if self.kind == "sqlite":
            return f"sqlite:///{self._work}/relay-{tag}.db"
        schema = f"bench_{tag}"
        self._made.append(schema)
        joiner = "&" if "?" in self._base else "?"
        return f"{self._base}{joiner}schema={schema}"

    def cleanup(self) -> None:
        """Drop the PostgreSQL schemas made (SQLite files go with the work folder)."""
        if not self._made:
            return
        import asyncpg  # noqa: PLC0415 - only with PostgreSQL

        async def drop() -> None:
            con = await asyncpg.connect(self._base.split("?")[0])
            try:
                for schema in self._made:
                    await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await con.close()

        asyncio.run(drop())


async def seed_store(url: str, *, consents: list[str], suppressed: int = 0) -> None:
    """Migrate `url` and record opt-in for `consents` and `suppressed` suppressions."""
    from relay.storage import open_store  # noqa: PLC0415 - after sys.path
    from relay.storage.records import Consent, Suppression  # noqa: PLC0415

    store = open_store(url)
    await store.open()
    try:
        await store.migrate()
        batch = 20_000
        for first in range(0, len(consents), batch):
            await store.record_consents(
                [
                    Consent(
                        "bench", address, "news", "imported", 0.0, None, "bench", evidence="bench"
                    )
                    for address in consents[first : first + batch]
                ]
            )
        for first in range(0, suppressed, batch):
            await store.suppress_many(
                [
                    Suppression(f"gone{n}@example.org", "bench", "import", "bench", 0.0)
                    for n in range(first, min(first + batch, suppressed))
                ]
            )
    finally:
        await store.close()


def delivered(web_ports: list[int]) -> float:
    """Copies delivered so far, summed over the relays' /metrics."""
    total = 0.0
    for port in web_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith('optin_relay_deliveries_total{outcome="delivered"}'):
                    total += float(line.split()[-1])
    return total


def wait_delivered(web_ports: list[int], count: int, timeout: float = 600) -> None:
    """Return once `count` copies are delivered."""
    deadline = time.monotonic() + timeout
    while delivered(web_ports) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} copies delivered within {timeout:.0f} s")
        time.sleep(0.02)


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_relay(
    config: Path, tree: Path | None = None, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """`optin-relay serve` on `config` (on `cpus`), from this checkout or `tree` (same venv)."""
    where: dict[str, Any] = {}
    if tree is not None:  # `-m` puts the working folder first on the path: run from the tree
        where = {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree)}}
    log = (config.parent / f"{config.stem}.log").open("w")
    return subprocess.Popen(
        [*taskset(cpus), sys.executable, "-m", "relay", "serve", "--config", str(config)],
        stdout=log,
        stderr=log,
        **where,
    )


def stop(*processes: subprocess.Popen[bytes] | None) -> None:
    """Stop the relay and the sink (SIGTERM, then wait: the relay drains gracefully)."""
    for process in processes:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)


def message(size: int, n: int = 0) -> bytes:
    """A newsletter-like message of about `size` bytes (the n-th copy differs in its greeting)."""
    head = (
        f"From: Bench News <news@bench.example>\r\nTo: Reader <reader@example.net>\r\n"
        f"Subject: The bench weekly\r\nMessage-ID: <{n}.{os.urandom(4).hex()}@bench.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello reader {n},\r\n\r\n"
    )
    line = "This week in the bench: a line of a newsletter, long enough to look like one.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


async def load(
    port: int,
    *,
    connections: int,
    messages: int,
    size: int = 4096,
    starttls: bool = False,
    login: tuple[str, str] | None = None,
    rate: float | None = None,
    recipients: int = 1,
) -> tuple[float, list[float]]:
    """Send `messages` over `connections` persistent sessions (aiosmtplib, the relay's client).

    Each session says EHLO (and STARTTLS and AUTH when asked) once, then sends its share. With
    `rate`, message i starts at i/rate seconds (open loop). Returns the seconds the whole load
    took and each transaction's latency (MAIL to the 250 after DATA).
    """
    import aiosmtplib  # noqa: PLC0415 - only the load generator needs it

    body = message(size)
    latencies: list[float] = []
    next_index = 0
    started = time.monotonic()

    async def session() -> None:
        nonlocal next_index
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=starttls, validate_certs=False, timeout=60
        )
        await client.connect()
        if login is not None:
            await client.login(*login)
        while next_index < messages:
            index = next_index
            next_index += 1
            if rate is not None:
                await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            rcpts = [
                f"reader{(index * recipients + r) % 1000}@example.net" for r in range(recipients)
            ]
            begun = time.monotonic()
            await client.sendmail("news@bench.example", rcpts, body)
            latencies.append(time.monotonic() - begun)
        await client.quit()

    await asyncio.gather(*(session() for _ in range(connections)))
    return time.monotonic() - started, latencies


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


READERS = [f"reader{n}@example.net" for n in range(1000)] + ["reader@example.net"]


class OpenDKIM:
    """OpenDKIM signing bench.example with `key`, a milter on a unix socket in its own folder.

    Needs Debian's `opendkim` package and root (it runs as the `opendkim` user).
    """

    def __init__(self, key: Path) -> None:
        """Write opendkim.conf and a readable copy of the key."""
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        self.root = Path(tempfile.mkdtemp(prefix="optin-relay-opendkim-"))
        self.root.chmod(0o755)
        self.socket = self.root / "opendkim.sock"
        shutil.copy(key, self.root / "key.pem")
        (self.root / "key.pem").chmod(0o644)
        shutil.chown(self.root, user="opendkim")
        settings = {
            "Syslog": "no",
            "Mode": "s",
            "Domain": "bench.example",
            "Selector": "bench",
            "KeyFile": self.root / "key.pem",
            "RequireSafeKeys": "no",
            "Canonicalization": "relaxed/relaxed",
            "SignatureAlgorithm": "rsa-sha256",
            "Socket": f"local:{self.socket}",
            "UMask": "000",
            "UserID": "opendkim",
            "Background": "no",
        }
        self.conf = self.root / "opendkim.conf"
        self.conf.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """Why OpenDKIM cannot run here, or None."""
        if os.geteuid() != 0:
            return "needs root"
        if not Path("/usr/sbin/opendkim").exists():
            return "needs Debian's opendkim package"
        return None

    def start(self, cpus: set[int] | None = None) -> None:
        """Start the milter (on `cpus`) and wait for its socket."""
        command = [*taskset(cpus), "/usr/sbin/opendkim", "-f", "-x", str(self.conf)]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"opendkim did not start ({self.conf})")
            time.sleep(0.02)

    def cpu(self) -> float:
        """CPU seconds the milter has used so far."""
        return cpu_seconds(self.process.pid) if self.process else 0.0

    def stop(self) -> None:
        """Stop the milter."""
        if self.process is not None:
            stop(self.process)


class PostfixRelay:
    """Postfix as a relay into `sink_port`, from its own folder: plain, or with a DKIM milter.

    Needs Debian's `postfix` package and root (Postfix's master runs its daemons as the
    `postfix` user); no system-wide Postfix runs or is changed. With `milter` (OpenDKIM's
    socket) every message is signed before it is queued, as a Postfix + OpenDKIM relay does.
    """

    def __init__(self, sink_port: int, milter: Path | None = None) -> None:
        """Write main.cf and master.cf in a folder of its own (the postfix user must enter it)."""
        import tempfile  # noqa: PLC0415

        self.root = Path(tempfile.mkdtemp(prefix="optin-relay-postfix-"))
        self.root.chmod(0o755)
        self.etc, self.log = self.root / "etc", self.root / "maillog"
        self.port = free_port()
        for folder in ("etc", "queue", "data"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.root / "queue",
            "data_directory": self.root / "data",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.example",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{sink_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "local_transport": "error:no local delivery",
            "maillog_file_prefixes": str(self.root),
            "maillog_file": self.log,
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "default_process_limit": "100",
        }
        if milter is not None:
            settings |= {
                "smtpd_milters": f"unix:{milter}",
                "milter_default_action": "tempfail",  # unsigned mail never leaves
                "milter_protocol": "6",
            }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = [
            f"127.0.0.1:{self.port} inet n - n - - smtpd"
            if line.startswith("smtp ") and " inet " in line
            else line
            for line in master
        ]
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")

    @staticmethod
    def available() -> str | None:
        """Why Postfix cannot run here, or None."""
        if os.geteuid() != 0:
            return "needs root"
        if not Path("/usr/sbin/postfix").exists() or not Path("/etc/postfix/master.cf").exists():
            return "needs Debian's postfix package"
        return None

    def start(self, cpus: set[int] | None = None) -> None:
        """Start Postfix's master (its daemons on `cpus`) and wait for its SMTP port."""
        import shutil  # noqa: PLC0415

        shutil.chown(self.root / "data", user="postfix")
        postfix = ["/usr/sbin/postfix", "-c", str(self.etc)]
        subprocess.run([*postfix, "set-permissions"], check=False, capture_output=True)
        subprocess.run([*taskset(cpus), *postfix, "start"], check=True, capture_output=True)
        wait_port(self.port)

    def cpu(self) -> float:
        """CPU seconds Postfix has used so far: its master, the daemons it ran and runs."""
        master = int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        return cpu_seconds(master, reaped=True) + children_cpu(master)

    def sent(self) -> int:
        """Messages Postfix has handed to the relayhost so far."""
        try:
            return self.log.read_text(errors="replace").count(" status=sent ")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        """Stop Postfix."""
        subprocess.run(
            ["/usr/sbin/postfix", "-c", str(self.etc), "stop"], check=False, capture_output=True
        )


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far, every core (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def processes_cpu(name: str) -> float:
    """CPU seconds used so far by every process called `name` (the database server, say)."""
    return sum(seconds for comm, _, seconds in _processes() if comm == name)


def _processes() -> Iterator[tuple[str, int, float]]:
    """Each running process: its name, its parent's pid, the CPU seconds it has used (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended meanwhile
            continue
        name, rest = text.split(" (", 1)[1].rsplit(")", 1)
        fields = rest.split()
        yield name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
