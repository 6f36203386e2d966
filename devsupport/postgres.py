"""A real PostgreSQL server on loopback, configured as the chart configures it.

From Debian's binaries, bound to 127.0.0.1 on a free port, TLS only (``ssl =
on``, TLS 1.2 at least), clients authenticated by certificate (``hostssl all
all 127.0.0.1/32 cert``; the certificate's CN is the user). One extra user,
:data:`PASSWORD_USER`, logs in with SCRAM over TLS so the password path can be
tested; there is no non-TLS ``host`` rule at all. Superuser work goes through
the Unix socket in the server's temporary directory (``local all all trust``).

Roles come from ``charts/nvsentinel/files/postgresql/bootstrap.sql``, run with
psql exactly as the chart runs it, in every database :meth:`PostgresServer.create_database`
makes. The datastore tests (``tests/fixtures/postgres.py``: one server per
session, a fresh database per test) and the benchmarks (``bench/server.py``)
start their servers here, so there is one way to start a server.

If the server cannot start, :class:`PostgresStartError` carries the server's log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from devsupport.ca import CertDir, Pki

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP_SQL = REPO / "charts" / "nvsentinel" / "files" / "postgresql" / "bootstrap.sql"

#: Roles from the contract (bootstrap.sql's defaults).
MIGRATION_USER = "nvsentinel_migrator"
APP_USER = "nvsentinel"
APP_GROUP = "nvsentinel_app"
#: Each NVSentinel service's own login role, as the chart names them, nvsentinel_<service>
#: (bootstrap.sql's ``service_users``, which the chart's initdb ConfigMap sets).
SERVICE_USERS = (
    "nvsentinel_platform_connectors",
    "nvsentinel_fault_quarantine",
    "nvsentinel_node_drainer",
    "nvsentinel_fault_remediation",
    "nvsentinel_health_events_analyzer",
    "nvsentinel_csp_health_monitor",
)
#: The role only the prune CronJob logs in as (bootstrap.sql creates it).
PRUNER_USER = "nvsentinel_pruner"
#: The one user allowed to log in with a password (SCRAM over TLS), for password-mode tests.
PASSWORD_USER = "nvsentinel_password_test"
PASSWORD = "nvsentinel-test-password"
#: The superuser the fixture creates with initdb; it only connects through the Unix socket.
SUPERUSER = "postgres"
#: The unprivileged system user the server runs as when it is started as root.
SERVER_OS_USER = "nvsentinel-test"

_START_TIMEOUT_S = 60
_PG_ENV_PREFIXES = ("PG",)


class PostgresStartError(RuntimeError):
    """The server did not start; the message carries its log."""


def find_bindir() -> Path:
    """Debian's PostgreSQL binaries, highest major first; ``PG_BINDIR`` overrides."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    candidates = []
    for postgres in Path("/usr/lib/postgresql").glob("*/bin/postgres"):
        major = postgres.parent.parent.name
        if major.isdigit():
            candidates.append((int(major), postgres.parent))
    if not candidates:
        raise PostgresStartError(
            "no PostgreSQL server binaries under /usr/lib/postgresql/<major>/bin "
            "(install Debian's postgresql package; hack/setup.sh does)"
        )
    return max(candidates)[1]


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables, so nothing but our arguments steers libpq."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_PG_ENV_PREFIXES)}


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as; ``None`` when we are not root (run as ourselves).

    initdb refuses to run as root, so as root a system user is created on first use.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_OS_USER,
            ],
            check=False,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVER_OS_USER)  # raises if useradd failed for another reason
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    """One running PostgreSQL server on 127.0.0.1, TLS only, certificate authentication."""

    bindir: Path
    base_dir: Path
    port: int
    pki: Pki
    account: tuple[int, int] | None
    host: str = "127.0.0.1"
    password_user: str = PASSWORD_USER
    password: str = PASSWORD
    superuser: str = SUPERUSER
    #: How long creating and starting the server took (initdb, start, bootstrap).
    start_seconds: float = 0.0
    _databases: int = field(default=0, repr=False)

    # -- paths ----------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def server_tls(self) -> CertDir:
        """The server's certificate directory (a copy owned by the server's account)."""
        return CertDir(self.base_dir / "server-tls")

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server and client certificates (``sslrootcert``)."""
        return self.pki.ca_file

    @property
    def wrong_ca_file(self) -> Path:
        """A CA unrelated to the server's: verification against it must fail."""
        return self.pki.wrong_ca_file

    @property
    def major_version(self) -> int:
        return int(self.bindir.parent.name)

    # -- connection strings ---------------------------------------------------
    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        """Superuser over the Unix socket (``local all all trust``): fixture work only."""
        return make_conninfo(
            host=str(self.socket_dir), port=self.port, user=self.superuser, dbname=dbname
        )

    def client_cert(self, user: str) -> CertDir:
        """A client certificate directory (CN = ``user``) signed by the server's CA."""
        return self.pki.client(user)

    def conninfo(
        self,
        user: str = APP_USER,
        dbname: str = "postgres",
        sslmode: str = "verify-full",
        **extra: str | int,
    ) -> str:
        """A TCP+TLS connection string authenticating with ``user``'s client certificate.

        ``host`` is ``localhost`` (a name the server certificate covers) with
        ``hostaddr`` 127.0.0.1; pass ``host=...``/``hostaddr=...`` and any other
        libpq keyword in ``extra`` to change them.
        """
        cert = self.client_cert(user)
        params: dict[str, str | int] = {
            "host": "localhost",
            "hostaddr": self.host,
            "port": self.port,
            "user": user,
            "dbname": dbname,
            "sslmode": sslmode,
            "sslcert": str(cert.cert),
            "sslkey": str(cert.key),
            "sslrootcert": str(cert.ca),
            "connect_timeout": 10,
        }
        params.update(extra)
        return make_conninfo(**{k: str(v) for k, v in params.items()})

    def datastore_env(
        self, dbname: str, user: str = APP_USER, sslmode: str = "verify-full"
    ) -> dict[str, str]:
        """The ``DATASTORE_*`` environment a service would get to reach ``dbname`` as ``user``."""
        return {
            "DATASTORE_PROVIDER": "postgresql",
            "DATASTORE_HOST": "localhost",
            "DATASTORE_PORT": str(self.port),
            "DATASTORE_DATABASE": dbname,
            "DATASTORE_USERNAME": user,
            "DATASTORE_SSLMODE": sslmode,
            "POSTGRESQL_CLIENT_CERT_MOUNT_PATH": str(self.client_cert(user).path),
        }

    # -- commands -------------------------------------------------------------
    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server's account."""
        uid, gid = self.account if self.account is not None else (None, None)
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            env=_clean_env(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
        if check and result.returncode != 0:
            raise PostgresStartError(
                f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\n--- server log {self.log_path} ---\n{self.log_tail()}"
            )
        return result

    def psql(
        self,
        command: str | None = None,
        *,
        dbname: str = "postgres",
        file: Path | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> str:
        """Run SQL (or a file) with psql as the superuser over the socket; returns stdout."""
        cmd = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.superuser_conninfo(dbname),
        ]
        for name, value in (variables or {}).items():
            cmd += ["-v", f"{name}={value}"]
        if file is not None:
            cmd += ["-f", str(file)]
        if command is not None:
            cmd += ["-c", command]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise AssertionError(f"psql {file or command!r} failed: {result.stderr.strip()}")
        return result.stdout

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """The whole server log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return (
            self._run(["pg_ctl", "-D", str(self.data_dir), "status"], check=False).returncode == 0
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(_START_TIMEOUT_S),
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean, disconnects clients) or ``immediate`` (a crash)."""
        self._run(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode`` as for :meth:`stop`) and start again on the same port."""
        if self.is_running():
            self.stop(mode)
        self.start()

    def reload(self) -> None:
        """Re-read postgresql.conf, pg_hba.conf and the TLS files; returns once it has.

        ``pg_ctl reload`` only signals the server, so this waits until the
        server's configuration load time moves.
        """
        query = "SELECT pg_conf_load_time()"
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            before = conn.execute(query).fetchone()
        self._run(["pg_ctl", "-D", str(self.data_dir), "reload"])
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
                if conn.execute(query).fetchone() != before:
                    return
            time.sleep(0.02)
        raise PostgresStartError(f"the server did not reload:\n{self.log_tail()}")

    def install_server_cert(self, source: CertDir) -> None:
        """Replace the server's certificate files (as cert-manager renews a Secret).

        The running server keeps serving the old certificate until :meth:`reload`.
        """
        for name in ("tls.crt", "tls.key", "ca.crt"):
            target = self.server_tls.path / name
            shutil.copyfile(source.path / name, target)
            target.chmod(0o600 if name == "tls.key" else 0o644)
            if self.account is not None:
                os.chown(target, *self.account)

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    # -- databases ------------------------------------------------------------
    def bootstrap(self, dbname: str) -> None:
        """Run bootstrap.sql in ``dbname`` as the chart does (roles, schema ownership)."""
        self.psql(
            dbname=dbname,
            file=BOOTSTRAP_SQL,
            variables={
                "migration_user": MIGRATION_USER,
                "app_user": APP_USER,
                "service_users": " ".join(SERVICE_USERS),
            },
        )

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (from template0) with bootstrap.sql applied; returns its name."""
        if name is None:
            self._databases += 1
            name = f"nvs_{self._databases}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        self.bootstrap(name)
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass(frozen=True)
class PostgresDatabase:
    """A fresh database on the session's server, bootstrapped, dropped after the test."""

    server: PostgresServer
    name: str

    def conninfo(
        self, user: str = APP_USER, sslmode: str = "verify-full", **extra: str | int
    ) -> str:
        """TLS + client certificate connection string for ``user`` to this database."""
        return self.server.conninfo(user=user, dbname=self.name, sslmode=sslmode, **extra)

    def superuser_conninfo(self) -> str:
        return self.server.superuser_conninfo(self.name)

    def datastore_env(self, user: str = APP_USER, sslmode: str = "verify-full") -> dict[str, str]:
        """The ``DATASTORE_*`` variables a service would get for this database."""
        return self.server.datastore_env(self.name, user=user, sslmode=sslmode)


def _write_server_config(server: PostgresServer) -> None:
    tls = server.server_tls
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(server.port),
        "unix_socket_directories": f"'{server.socket_dir}'",
        "ssl": "on",
        "ssl_cert_file": f"'{tls.cert}'",
        "ssl_key_file": f"'{tls.key}'",
        "ssl_ca_file": f"'{tls.ca}'",
        "ssl_min_protocol_version": "'TLSv1.2'",
        "password_encryption": "'scram-sha-256'",
        "log_connections": "on",
        "log_line_prefix": "'%m [%p] %q%u@%d '",
        # Speed: a crash of the server (not of the machine) loses nothing. The
        # benchmarks turn it back on (bench/server.py).
        "fsync": "off",
    }
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# nvsentinel test server\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")
    (server.data_dir / "pg_hba.conf").write_text(
        "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
        "local    all  all  trust\n"
        f"hostssl  all  {PASSWORD_USER}  127.0.0.1/32  scram-sha-256\n"
        "hostssl  all  all  127.0.0.1/32  cert\n"
    )


def _chown_tree(path: Path, account: tuple[int, int] | None) -> None:
    if account is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *account)
        for name in dirs + files:
            os.chown(os.path.join(root, name), *account)


def start_server(pki: Pki, bindir: Path | None = None, attempts: int = 3) -> PostgresServer:
    """Create a cluster in a temporary directory and start it on a free loopback port."""
    bindir = bindir or find_bindir()
    account = _server_account()
    base = Path(tempfile.mkdtemp(prefix="nvsentinel-pg-"))
    base.chmod(0o700)
    (base / "sock").mkdir()
    tls_dir = base / "server-tls"
    tls_dir.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        shutil.copy2(pki.server.path / name, tls_dir / name)
    (tls_dir / "tls.key").chmod(0o600)
    _chown_tree(base, account)

    server = PostgresServer(bindir=bindir, base_dir=base, port=0, pki=pki, account=account)
    try:
        server._run(
            [
                "initdb",
                "-D",
                str(server.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        for attempt in range(1, attempts + 1):
            server.port = free_loopback_port()
            _write_server_config(server)
            try:
                server.start()
                break
            except PostgresStartError:
                port_taken = "could not bind" in server.log_text() or "in use" in server.log_text()
                if attempt == attempts or not port_taken:
                    raise
        server.bootstrap("postgres")
        server.psql(
            f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'; "
            f"GRANT {APP_GROUP} TO {PASSWORD_USER};"
        )
    except BaseException:
        destroy_server(server)  # the error message already carries the log
        raise
    return server


def destroy_server(server: PostgresServer) -> None:
    """Stop the server (fast, then immediate if that fails) and remove its directory."""
    with contextlib.suppress(PostgresStartError):
        if server.is_running():
            try:
                server.stop("fast")
            except PostgresStartError:
                server.stop("immediate")
    shutil.rmtree(server.base_dir, ignore_errors=True)
