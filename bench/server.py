"""The benchmark's PostgreSQL: the datastore tests' server, made durable like production.

The server comes from :mod:`devsupport.postgres` (Debian's binaries, bound
to 127.0.0.1, TLS only, ``hostssl ... cert``): the same code the datastore
tests use, so there is one way to start a server. Two differences from the
tests, both set here: the fixture runs with ``fsync = off`` for test speed, the
benchmark turns it back on (production durability) unless asked not to; and
each benchmark database gets the schema as the migration role: ours through
:func:`nvsentinel_store.migrations.apply`, as ``nvsentinel-store schema apply``
does, or, for the comparison in the write benchmark, NVSentinel's own
migration files through ``psql`` (:meth:`BenchServer.create_nvsentinel_database`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from bench.cpu import CpuMeter, postmaster_pid
from devsupport.ca import make_pki
from devsupport.nvsentinel import apply_nvsentinel_migrations
from devsupport.postgres import (
    APP_USER,
    MIGRATION_USER,
    PostgresDatabase,
    PostgresServer,
    destroy_server,
    start_server,
)
from nvsentinel_store.providers.postgresql import migrations

#: Our migration that is NVSentinel's schema version 3 and nothing else of ours.
NVSENTINEL_SCHEMA_MIGRATION = "0001_nvsentinel_schema.sql"

#: What NVSentinel's deployment grants its services' role after its migrations.
NVSENTINEL_APP_GRANTS = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO nvsentinel_app",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO nvsentinel_app",
)


@dataclass
class BenchServer:
    """A running server and the databases made on it."""

    server: PostgresServer
    databases: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def conninfo(self, dbname: str, user: str = APP_USER) -> str:
        """TCP to 127.0.0.1, TLS ``verify-full``, client certificate of ``user``."""
        return self.server.conninfo(user=user, dbname=dbname, sslmode="verify-full")

    def libpq_env(self, dbname: str, user: str = APP_USER) -> dict[str, str]:
        """The same connection as libpq environment variables (for pgbench)."""
        cert = self.server.client_cert(user)
        return {
            "PGHOST": "localhost",
            "PGHOSTADDR": self.server.host,
            "PGPORT": str(self.server.port),
            "PGUSER": user,
            "PGDATABASE": dbname,
            "PGSSLMODE": "verify-full",
            "PGSSLCERT": str(cert.cert),
            "PGSSLKEY": str(cert.key),
            "PGSSLROOTCERT": str(cert.ca),
        }

    def set_durable(self, durable: bool) -> None:
        """``fsync`` on (production) or off (isolates CPU cost); applied by a reload."""
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET fsync = {'on' if durable else 'off'}")
        self.server.reload()

    def fsync(self) -> str:
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            row = conn.execute("SHOW fsync").fetchone()
        return str(row[0]) if row else "?"

    def create_database(self, name: str, through: str | None = None) -> str:
        """A bootstrapped database with our migrations applied (NVSentinel's schema and ours).

        ``through``: apply only the migrations up to the file of that name.
        """
        self.server.create_database(name)
        self.databases.append(name)
        with (
            tempfile.TemporaryDirectory(prefix="nvsentinel-bench-migrations-") as tmp,
            psycopg.connect(self.conninfo(name, MIGRATION_USER), autocommit=True) as conn,
        ):
            directory = None
            if through is not None:
                directory = Path(tmp)
                for migration in migrations.load_migrations():
                    if migration.path.name <= through:
                        shutil.copy(migration.path, directory)
            migrations.apply(conn, directory)
        return name

    def create_nvsentinel_database(self, name: str) -> str:
        """A bootstrapped database with NVSentinel's own migration files and nothing of ours.

        Applied as the datastore tests apply them (psql, ``ON_ERROR_STOP``, the
        migration role, NVSentinel's order), then :data:`NVSENTINEL_APP_GRANTS`.
        """
        self.server.create_database(name)
        self.databases.append(name)
        apply_nvsentinel_migrations(PostgresDatabase(server=self.server, name=name))
        with psycopg.connect(self.conninfo(name, MIGRATION_USER), autocommit=True) as conn:
            for grant in NVSENTINEL_APP_GRANTS:
                conn.execute(grant)
        return name

    def set_notify_changes(self, dbname: str, on: bool) -> None:
        """``ALTER DATABASE ... SET nvsentinel.notify_changes`` (new sessions see it)."""
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET nvsentinel.notify_changes = {}").format(
                    sql.Identifier(dbname), sql.Literal("on" if on else "off")
                )
            )

    def cpu_meter(self) -> CpuMeter:
        """A started meter of the CPU that work other than this benchmark takes."""
        return CpuMeter(postmaster_pid(self.server.data_dir)).start()

    def checkpoint(self) -> None:
        """Flush dirty pages now, so that a measurement does not inherit the last one's."""
        with psycopg.connect(self.server.superuser_conninfo(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def analyze(self, dbname: str) -> None:
        with psycopg.connect(self.server.superuser_conninfo(dbname), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")


@contextmanager
def running_server() -> Iterator[BenchServer]:
    """A fresh CA and server, stopped and removed on exit (also on errors and Ctrl-C)."""
    pki_dir = Path(tempfile.mkdtemp(prefix="nvsentinel-bench-pki-"))
    try:
        server = start_server(make_pki(pki_dir))
        try:
            yield BenchServer(server)
        finally:
            destroy_server(server)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)
