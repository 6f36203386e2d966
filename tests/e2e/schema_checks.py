"""Checks that a PostgreSQL database holds the schema the chart ships, as the app user sees it.

The expectations come from the migration files themselves
(`charts/nvsentinel/files/postgresql/migrations/`): every numbered migration is
recorded in `schema_migrations`, every table and trigger they create exists.
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
    """Every shipped migration, and nothing else, is recorded as applied."""
    applied = dict(conn.execute("SELECT version, name FROM schema_migrations").fetchall())
    shipped = shipped_migrations()
    assert applied == shipped, f"applied {applied}, shipped {shipped}"


def assert_tables_and_triggers(conn: Connection) -> None:
    """The migrations' tables and triggers exist; both event tables have triggers."""
    tables = declared(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)")
    assert tables >= SEED_TABLES, tables
    triggers = declared(r"CREATE (?:OR REPLACE )?TRIGGER (\w+)")
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
    for table in ("health_events", "maintenance_events"):
        assert table in present_triggers.values(), f"no trigger on {table}"
