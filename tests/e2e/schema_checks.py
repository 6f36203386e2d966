"""Checks that a PostgreSQL database holds the schema the chart ships, as the app user sees it.

The expectations come from the migration files themselves
(`charts/nvsentinel/files/postgresql/migrations/`): every numbered migration is
recorded in this project's history table `nvsentinel_store_migrations`, every
table and trigger they create exists. Migration 0001 is NVSentinel's schema
version 3, so NVSentinel's own history `nvsentinel_schema_migrations` holds its
versions 1-3 (what NVSentinel's store-client waits for before a service starts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "charts" / "nvsentinel" / "files" / "postgresql" / "migrations"
#: The tables the seed names (operators query them while troubleshooting).
SEED_TABLES = {"health_events", "maintenance_events", "datastore_changelog", "resume_tokens"}
#: NVSentinel's schema versions that migration 0001 records in NVSentinel's history.
NVSENTINEL_SCHEMA_VERSIONS = [1, 2, 3]
#: The event tables (the change streams' collections).
EVENT_TABLES = ("health_events", "maintenance_events")
#: NVSentinel's change log triggers: 0001 creates them by name only when missing
#: (`EXECUTE format('CREATE TRIGGER %I ...', t || '_changes')`), so the
#: declaration pattern below cannot see them.
NVSENTINEL_TRIGGERS = {f"{table}_changes": table for table in EVENT_TABLES}

Connection = psycopg.Connection[Any]


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def shipped_migrations() -> dict[int, str]:
    """Version -> file name of every migration (2: `0002_change_capture.sql`), as recorded."""
    return {int(path.name[:4]): path.name for path in migration_files()}


def declared(pattern: str) -> set[str]:
    """Names the migrations declare with ``pattern`` (one capture group), lower-cased."""
    names: set[str] = set()
    for path in migration_files():
        names.update(re.findall(pattern, path.read_text(), flags=re.IGNORECASE))
    return {name.lower() for name in names}


def assert_schema_current(conn: Connection) -> None:
    """Every shipped migration, and nothing else, is recorded; NVSentinel's versions 1-3 too."""
    applied = dict(conn.execute("SELECT version, name FROM nvsentinel_store_migrations").fetchall())
    shipped = shipped_migrations()
    assert applied == shipped, f"applied {applied}, shipped {shipped}"
    nvsentinel = [
        row[0]
        for row in conn.execute(
            "SELECT version FROM nvsentinel_schema_migrations ORDER BY version"
        ).fetchall()
    ]
    assert nvsentinel == NVSENTINEL_SCHEMA_VERSIONS, f"NVSentinel's versions: {nvsentinel}"


def assert_tables_and_triggers(conn: Connection) -> None:
    """The migrations' tables and triggers exist; both event tables have theirs."""
    tables = declared(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)")
    assert tables >= SEED_TABLES, tables
    triggers = declared(r"CREATE (?:OR REPLACE )?TRIGGER (\w+)") | set(NVSENTINEL_TRIGGERS)
    present_tables = {
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    }
    present_triggers = dict(
        conn.execute(
            "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"
        ).fetchall()
    )
    assert tables <= present_tables, f"missing tables: {tables - present_tables}"
    assert triggers <= set(present_triggers), (
        f"missing triggers: {triggers - set(present_triggers)}"
    )
    for name, table in NVSENTINEL_TRIGGERS.items():
        assert present_triggers[name] == table, f"{name} is on {present_triggers[name]}"
    for table in EVENT_TABLES:
        assert table in present_triggers.values(), f"no trigger on {table}"
