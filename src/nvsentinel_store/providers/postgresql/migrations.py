"""The schema migration applier (Python side of the one protocol).

The SQL lives in ``charts/nvsentinel/files/postgresql/migrations/`` (the only
copy), as ``NNNN_<name>.sql`` files: forward-only, applied in version order.
The chart's schema Job applies the same files with
``charts/nvsentinel/files/postgresql/apply-migrations.sh`` (psql); both follow
this protocol, so either can apply and the other reads the result:

1. take ``pg_advisory_lock(hashtext('nvsentinel_store_migrations'))`` (session
   lock: concurrent appliers run one after the other);
2. refuse a database set up by a pre-release of this chart (its history table
   ``schema_migrations`` lists ``0001_event_tables.sql``): its layout (text
   ids, another change log) cannot be migrated in place;
3. create ``nvsentinel_store_migrations(version, name, checksum, applied_at)``
   if missing; ``name`` is the file name, ``checksum`` the sha256 hex of the
   file's bytes. This is this project's history only: NVSentinel's own
   ``nvsentinel_schema_migrations`` holds NVSentinel's versions (1-3, written
   by migration 0001), so a future NVSentinel version 4 is never taken for
   applied;
4. refuse (before applying anything) when a recorded checksum differs from its
   file;
5. for each file whose version is not recorded, in order: run it and insert its
   row in one transaction; a file whose first line is
   ``-- nvsentinel:no-transaction`` runs statement by statement outside a
   transaction (for ``CREATE INDEX CONCURRENTLY``), then its row is inserted.

Migration files are plain SQL: no psql meta-commands (lines starting with a
backslash), no BEGIN/COMMIT of their own.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import psycopg

from nvsentinel_store.errors import MigrationError

LOCK_KEY: Final = "nvsentinel_store_migrations"
#: This project's migration history (NVSentinel's is nvsentinel_schema_migrations).
HISTORY_TABLE: Final = "nvsentinel_store_migrations"
NO_TRANSACTION_MARKER: Final = "-- nvsentinel:no-transaction"
FILE_PATTERN: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Overrides where the migration files are looked for.
MIGRATIONS_DIR_ENV: Final = "NVSENTINEL_MIGRATIONS_DIR"

#: A database set up by a pre-release of this chart, which recorded its
#: migrations in schema_migrations under other file names.
PRE_RELEASE_SQL: Final = """
SELECT to_regclass('schema_migrations') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = to_regclass('schema_migrations') AND attname = 'checksum')
"""
PRE_RELEASE_MESSAGE: Final = (
    "this database was set up by a pre-release of the nvsentinel chart (its table "
    "schema_migrations records 0001_event_tables.sql); that layout has text ids and "
    "another change log and cannot be migrated in place: export the documents, one JSON "
    "object a line (psql -AtX -c 'SELECT document FROM health_events' > health_events.json, "
    "the same for maintenance_events), create a new database and import them with "
    "'nvsentinel-store migrate' (docs/migration.md)"
)

CREATE_TABLE_SQL: Final = """
CREATE TABLE IF NOT EXISTS nvsentinel_store_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    checksum: str
    transactional: bool

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class AppliedMigration:
    """A row of ``nvsentinel_store_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class Mismatch:
    """A recorded migration whose file changed since it was applied."""

    migration: Migration
    recorded_checksum: str

    def describe(self) -> str:
        return (
            f"{self.migration.path}: applied with checksum {self.recorded_checksum}, "
            f"the file now has {self.migration.checksum}; migrations are forward-only: "
            "restore the file and add a new migration instead"
        )


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against the migration files."""

    applied: list[AppliedMigration]
    pending: list[Migration]
    mismatched: list[Mismatch]
    #: Versions recorded in the database that no file here knows (a newer release applied them).
    unknown: list[AppliedMigration]

    @property
    def version(self) -> int | None:
        """The highest applied version (``None`` before the first migration)."""
        return max((a.version for a in self.applied), default=None)

    @property
    def current(self) -> bool:
        return not self.pending and not self.mismatched


def default_migrations_dir() -> Path:
    """``$NVSENTINEL_MIGRATIONS_DIR``, else the chart's folder in this source tree."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[4]
    return repo / "charts" / "nvsentinel" / "files" / "postgresql" / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in ``directory``, in version order.

    Every ``.sql`` file there must be named ``NNNN_<name>.sql`` with a unique
    version; anything else is an error rather than a file silently skipped.
    """
    directory = directory or default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(
            f"migrations directory {directory} does not exist "
            f"(set {MIGRATIONS_DIR_ENV} or --migrations-dir)"
        )
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_<name>.sql (lower case)")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(
                f"{path}: version {version} is also used by {migrations[version].path.name}"
            )
        data = path.read_bytes()
        text = data.decode("utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if line.startswith("\\"):
                raise MigrationError(
                    f"{path}:{number}: psql meta-commands are not allowed in migrations"
                )
        first_line = text.split("\n", 1)[0].rstrip("\r").strip()
        migrations[version] = Migration(
            version=version,
            name=path.name,
            path=path,
            checksum=hashlib.sha256(data).hexdigest(),
            transactional=first_line != NO_TRANSACTION_MARKER,
        )
    return [migrations[v] for v in sorted(migrations)]


def _recorded(conn: psycopg.Connection[tuple[object, ...]]) -> list[AppliedMigration]:
    row = conn.execute("SELECT to_regclass('nvsentinel_store_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at FROM nvsentinel_store_migrations "
        "ORDER BY version"
    ).fetchall()
    result = []
    for version, name, checksum, applied_at in rows:
        assert isinstance(version, int) and isinstance(name, str)
        assert isinstance(checksum, str) and isinstance(applied_at, datetime)
        result.append(AppliedMigration(version, name, checksum, applied_at))
    return result


def _compare(applied: list[AppliedMigration], migrations: list[Migration]) -> SchemaStatus:
    by_version = {a.version: a for a in applied}
    known = {m.version for m in migrations}
    pending = [m for m in migrations if m.version not in by_version]
    mismatched = [
        Mismatch(m, by_version[m.version].checksum)
        for m in migrations
        if m.version in by_version and by_version[m.version].checksum != m.checksum
    ]
    unknown = [a for a in applied if a.version not in known]
    return SchemaStatus(applied=applied, pending=pending, mismatched=mismatched, unknown=unknown)


def status(
    conn: psycopg.Connection[tuple[object, ...]], directory: Path | None = None
) -> SchemaStatus:
    """Applied, pending, changed and unknown migrations of the connected database."""
    migrations = load_migrations(directory)
    with conn.transaction():
        refuse_pre_release(conn)
        return _compare(_recorded(conn), migrations)


def apply(
    conn: psycopg.Connection[tuple[object, ...]],
    directory: Path | None = None,
    on_migration: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Apply the pending migrations in order; returns those applied (empty: nothing to do).

    ``conn`` must be in autocommit mode (the applier manages transactions).
    ``on_migration`` is called before each migration runs (for progress output).
    """
    if not conn.autocommit:
        raise MigrationError("the migration connection must be in autocommit mode")
    migrations = load_migrations(directory)
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (LOCK_KEY,))
    try:
        refuse_pre_release(conn)
        conn.execute(CREATE_TABLE_SQL)
        state = _compare(_recorded(conn), migrations)
        if state.mismatched:
            raise MigrationError(state.mismatched[0].describe())
        done: list[Migration] = []
        for migration in state.pending:
            if on_migration is not None:
                on_migration(migration)
            _apply_one(conn, migration)
            done.append(migration)
        return done
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (LOCK_KEY,))


def refuse_pre_release(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Raise :class:`MigrationError` on a database of a pre-release layout."""
    row = conn.execute(PRE_RELEASE_SQL).fetchone()
    if row is not None and row[0]:
        raise MigrationError(PRE_RELEASE_MESSAGE)


def _record(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    conn.execute(
        "INSERT INTO nvsentinel_store_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


def _apply_one(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    text = migration.sql()
    try:
        if migration.transactional:
            with conn.transaction():
                # No parameters: psycopg sends the file as one simple query.
                conn.execute(text.encode("utf-8"))
                _record(conn, migration)
        else:
            for statement in split_statements(text):
                conn.execute(statement.encode("utf-8"))
            _record(conn, migration)
    except psycopg.Error as err:
        raise MigrationError(f"{migration.path}: {_one_line(err)}") from err


def _one_line(err: psycopg.Error) -> str:
    diag = err.diag
    message = diag.message_primary or str(err).strip().splitlines()[0]
    parts = [message]
    if diag.context:
        parts.append(f"({diag.context.strip().splitlines()[-1]})")
    return " ".join(parts)


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def split_statements(text: str) -> list[str]:
    """Split SQL text into statements at top-level semicolons.

    Understands ``--`` and ``/* */`` comments, single-quoted strings, quoted
    identifiers and dollar-quoted bodies, which is what migration files use.
    """
    statements: list[str] = []
    start = 0
    i = 0
    n = len(text)
    depth = 0  # nesting of /* */ comments
    while i < n:
        ch = text[i]
        if depth:
            if text.startswith("*/", i):
                depth -= 1
                i += 2
            elif text.startswith("/*", i):
                depth += 1
                i += 2
            else:
                i += 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth = 1
            i += 2
        elif ch in ("'", '"'):
            i += 1
            while i < n:
                if text[i] == ch:
                    if i + 1 < n and text[i + 1] == ch:
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif ch == "$":
            match = _DOLLAR_TAG.match(text, i)
            if match is None:
                i += 1
            else:
                tag = match.group(0)
                end = text.find(tag, match.end())
                i = n if end < 0 else end + len(tag)
        elif ch == ";":
            statements.append(text[start : i + 1])
            start = i + 1
            i += 1
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    for line in statement.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            return True
    return False
