"""PostgreSQL clusters a test starts itself (initdb, pg_ctl) to crash, fail over or pool them.

Each lives in a folder of its own under /tmp (readable by the `postgres` user, which runs the
server: PostgreSQL refuses to run as root), listens on a free loopback port, and is removed at
the end. The system's cluster is never touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `args` as the postgres user (this process may be root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


def psql(port: int, statement: str, database: str) -> str:
    """Run one statement against the server (or pooler) on `port`; its output."""
    return _as_postgres(
        [
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            database,
            "-Atc",
            statement,
        ]
    ).stdout


def scratch(prefix: str) -> Path:
    """A folder the postgres user owns."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    user = pwd.getpwnam("postgres")
    os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


class PgCluster:
    """One PostgreSQL server of the test's own."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = port or free_port()

    @classmethod
    def create(cls) -> PgCluster:
        """A new primary, initialised (not started), with a `relay` database once started."""
        cluster = cls(scratch("optin-pg-"))
        _as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust"]
        )
        cluster._configure()
        return cluster

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.folder}'",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "hot_standby": "on",
            "max_connections": "100",
            "fsync": "on",  # a crash test is only honest with a durable server
        }
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.folder / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def create_database(self, name: str = "relay") -> None:
        _as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), name])

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: `immediate` is a crash (no checkpoint, recovery at start)."""
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def promote(self) -> None:
        """Make a standby the primary."""
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def standby(self) -> PgCluster:
        """A streaming standby of this (running) server, initialised with pg_basebackup -R."""
        replica = PgCluster(scratch("optin-pg-standby-"))
        _as_postgres(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]
        )
        with (replica.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {replica.port}\nunix_socket_directories = '{replica.folder}'\n")
        return replica

    def sql(self, statement: str, database: str = "relay") -> str:
        """Run one statement with psql; its output."""
        return psql(self.port, statement, database)

    def url(self, database: str = "relay") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        """Stop the server if it runs, and remove its folder."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)


class PgBouncer:
    """Debian's pgbouncer in transaction pooling mode in front of one cluster."""

    def __init__(self, cluster: PgCluster, *, pool_size: int = 10) -> None:
        self.cluster = cluster
        self.folder = scratch("optin-pgbouncer-")
        self.port = free_port()
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ini = self.folder / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"relay = host=127.0.0.1 port={self.cluster.port} dbname=relay user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir = {self.folder}\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder}/users.txt\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
            "server_reset_query =\n"
            # after a failed connection to the server, try again in 1 s, not 15 s (the default):
            # how long the relay waits for PostgreSQL after it comes back
            "server_login_retry = 1\n"
            f"logfile = {self.folder}/pgbouncer.log\n"
        )
        (self.folder / "users.txt").write_text('"postgres" ""\n')
        for path in (ini, self.folder / "users.txt"):
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)
        args = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.cluster_ready()
            except subprocess.CalledProcessError:
                time.sleep(0.1)
                continue
            return
        msg = f"pgbouncer did not start: {self.log()}"
        raise AssertionError(msg)

    def cluster_ready(self) -> None:
        psql(self.port, "select 1", "relay")

    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/relay"

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
