"""Datastore-tier fixtures on top of tests/fixtures/postgres.py: a database with the schema.

``schema_database`` is a fresh database with the migrations applied by the
Python applier as the migration role (over TLS with its client certificate),
exactly as ``nvsentinel-store schema apply`` does; ``store`` is the
application's :class:`PostgresStore` on it, connected as ``nvsentinel``.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from devsupport.postgres import APP_USER, MIGRATION_USER, PostgresDatabase
from nvsentinel_store.providers.postgresql import migrations
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions

#: The history a pre-release of this chart left: schema_migrations with checksums.
PRE_RELEASE_HISTORY = (
    "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
    "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO schema_migrations (version, name, checksum) "
    "VALUES (1, '0001_event_tables.sql', 'x')",
)


def write_pre_release_history(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Make the connected database look set up by a pre-release of this chart."""
    for statement in PRE_RELEASE_HISTORY:
        conn.execute(statement)


def apply_schema(database: PostgresDatabase) -> None:
    with psycopg.connect(database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        migrations.apply(conn)


@pytest.fixture
def schema_database(postgres_database: PostgresDatabase) -> PostgresDatabase:
    """A fresh database with every migration applied."""
    apply_schema(postgres_database)
    return postgres_database


@pytest.fixture
def store(schema_database: PostgresDatabase) -> Iterator[PostgresStore]:
    """The application's store on ``schema_database`` (user nvsentinel, verify-full)."""
    with PostgresStore(
        schema_database.conninfo(user=APP_USER),
        schema_database.name,
        StoreOptions(max_pool_size=12, retry_timeout=60.0),
    ) as opened:
        yield opened


@pytest.fixture
def app_conn(schema_database: PostgresDatabase) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection as the application user."""
    with psycopg.connect(schema_database.conninfo(user=APP_USER), autocommit=True) as conn:
        yield conn


@pytest.fixture
def superuser_conn(
    schema_database: PostgresDatabase,
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection (Unix socket) for test set-up only."""
    with psycopg.connect(schema_database.superuser_conninfo(), autocommit=True) as conn:
        yield conn
