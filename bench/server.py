"""The benchmark's PostgreSQL: the test fixture's server, made durable like production.

The server comes from :mod:`tests.fixtures.postgres` (Debian's binaries, bound
to 127.0.0.1, TLS only, ``hostssl ... cert``): the same code the datastore
tests use, so there is one way to start a server. Two differences from the
tests, both set here: the fixture runs with ``fsync = off`` for test speed, the
benchmark turns it back on (production durability) unless asked not to; and
each benchmark database gets the schema through
:func:`nvsentinel_store.migrations.apply` as the migration role, as
``nvsentinel-store schema apply`` does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from tests.fixtures.ca import make_pki
from tests.fixtures.postgres import (
    APP_USER,
    MIGRATION_USER,
    PostgresServer,
    destroy_server,
    start_server,
)

from bench.cpu import CpuMeter, postmaster_pid
from nvsentinel_store import migrations

#: The capture triggers are the ones running NVSentinel's change log function
#: (migration 0001); our position trigger on the change log (0002) runs with them.
CAPTURE_FUNCTION_PREFIX = "log_table_changes"


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

    def create_database(self, name: str, *, capture: bool = True) -> str:
        """A bootstrapped database with the schema applied; capture triggers off if asked."""
        self.server.create_database(name)
        self.databases.append(name)
        with psycopg.connect(self.conninfo(name, MIGRATION_USER), autocommit=True) as conn:
            migrations.apply(conn)
            if not capture:
                disable_capture(conn)
        return name

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


def capture_triggers(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[str, str]]:
    """(table, trigger) of every change-capture trigger in the schema."""
    rows = conn.execute(
        "SELECT c.relname::text, t.tgname::text FROM pg_trigger AS t "
        "JOIN pg_class AS c ON c.oid = t.tgrelid JOIN pg_proc AS p ON p.oid = t.tgfoid "
        "WHERE NOT t.tgisinternal AND p.proname LIKE %s ORDER BY 1, 2",
        (CAPTURE_FUNCTION_PREFIX + "%",),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def disable_capture(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """``ALTER TABLE ... DISABLE TRIGGER`` on every capture trigger (as the owner)."""
    triggers = capture_triggers(conn)
    tables = {table for table, _ in triggers}
    if "health_events" not in tables:
        raise RuntimeError(
            f"no capture trigger (function {CAPTURE_FUNCTION_PREFIX}*) on health_events; "
            f"found {triggers}"
        )
    for table, trigger in triggers:
        conn.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{trigger}"')


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
