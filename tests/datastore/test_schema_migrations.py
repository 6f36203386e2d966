"""The migration protocol, through both appliers (Python and the chart's shell script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devsupport.postgres import MIGRATION_USER, PostgresDatabase
from nvsentinel_store import cli
from nvsentinel_store.errors import MigrationError
from nvsentinel_store.providers.postgresql import migrations
from tests.datastore.conftest import write_pre_release_history

pytestmark = pytest.mark.datastore

REPO = Path(__file__).resolve().parents[2]
PG_FILES = REPO / "charts" / "nvsentinel" / "files" / "postgresql"
SHELL_APPLIER = PG_FILES / "apply-migrations.sh"
MIGRATIONS = PG_FILES / "migrations"


def migrator(database: PostgresDatabase) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(database.conninfo(user=MIGRATION_USER), autocommit=True)


def shell_apply(
    database: PostgresDatabase, *args: str, directory: Path = MIGRATIONS
) -> subprocess.CompletedProcess[str]:
    """Run apply-migrations.sh with the libpq environment the chart's Job gets."""
    cert = database.server.client_cert(MIGRATION_USER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST="localhost",
        PGHOSTADDR=database.server.host,
        PGPORT=str(database.server.port),
        PGDATABASE=database.name,
        PGUSER=MIGRATION_USER,
        PGSSLMODE="verify-full",
        PGSSLCERT=str(cert.cert),
        PGSSLKEY=str(cert.key),
        PGSSLROOTCERT=str(cert.ca),
        PSQL=str(database.server.bindir / "psql"),
    )
    return subprocess.run(
        [str(SHELL_APPLIER), "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def recorded(database: PostgresDatabase) -> list[tuple[int, str, str]]:
    """This project's history: nvsentinel_store_migrations."""
    with migrator(database) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum FROM nvsentinel_store_migrations ORDER BY version"
        ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def nvsentinel_recorded(database: PostgresDatabase) -> list[tuple[int, str]]:
    """NVSentinel's own history, which migration 0001 writes as NVSentinel's files do."""
    with migrator(database) as conn:
        rows = conn.execute(
            "SELECT version, description FROM nvsentinel_schema_migrations ORDER BY version"
        ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


#: NVSentinel's schema versions 1-3, as its migrations 00001-00003 record them.
NVSENTINEL_VERSIONS = [
    (1, "initial PostgreSQL schema"),
    (2, "reconcile historical Go runtime DDL"),
    (3, "health event idempotency index"),
]


def copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, target)
    return target


def test_python_apply_twice_applies_everything_once(postgres_database: PostgresDatabase) -> None:
    files = migrations.load_migrations()
    with migrator(postgres_database) as conn:
        first = migrations.apply(conn)
        second = migrations.apply(conn)
        state = migrations.status(conn)
    assert [m.name for m in first] == [m.name for m in files]
    assert second == []
    assert state.pending == [] and state.mismatched == []
    assert state.version == files[-1].version
    assert recorded(postgres_database) == [(m.version, m.name, m.checksum) for m in files]
    assert nvsentinel_recorded(postgres_database) == NVSENTINEL_VERSIONS


def test_shell_apply_twice_is_a_noop_the_second_time(postgres_database: PostgresDatabase) -> None:
    first = shell_apply(postgres_database)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applying ") == len(migrations.load_migrations())
    second = shell_apply(postgres_database)
    assert second.returncode == 0, second.stderr
    assert "applying" not in second.stdout
    files = migrations.load_migrations()
    assert recorded(postgres_database) == [(m.version, m.name, m.checksum) for m in files]
    assert nvsentinel_recorded(postgres_database) == NVSENTINEL_VERSIONS


def test_shell_apply_then_python_status_agree(postgres_database: PostgresDatabase) -> None:
    assert shell_apply(postgres_database).returncode == 0
    with migrator(postgres_database) as conn:
        state = migrations.status(conn)
        assert migrations.apply(conn) == []
    assert state.current and not state.unknown
    assert [a.name for a in state.applied] == [m.name for m in migrations.load_migrations()]


def test_python_apply_then_shell_status_agree(postgres_database: PostgresDatabase) -> None:
    before = shell_apply(postgres_database, "status")
    assert before.returncode == 1
    assert all(line.startswith("pending ") for line in before.stdout.splitlines())
    with migrator(postgres_database) as conn:
        migrations.apply(conn)
    after = shell_apply(postgres_database, "status")
    assert after.returncode == 0, after.stdout + after.stderr
    expected = [f"applied {m.version} {m.name}" for m in migrations.load_migrations()]
    assert after.stdout.splitlines() == expected


def test_changed_migration_is_refused_by_both_appliers(
    postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    with migrator(postgres_database) as conn:
        migrations.apply(conn)
    changed = copy_migrations(tmp_path)
    target = changed / "0002_change_capture.sql"
    target.write_text(target.read_text() + "\n-- edited after release\n")

    with migrator(postgres_database) as conn, pytest.raises(MigrationError) as refused:
        migrations.apply(conn, changed)
    assert "0002_change_capture.sql" in str(refused.value)

    result = shell_apply(postgres_database, directory=changed)
    assert result.returncode != 0
    assert "0002_change_capture.sql" in result.stderr
    status = shell_apply(postgres_database, "status", directory=changed)
    assert "changed 2 0002_change_capture.sql" in status.stdout


def _extra_migrations(tmp_path: Path, name: str, text: str) -> Path:
    directory = copy_migrations(tmp_path)
    (directory / name).write_text(text)
    return directory


CONCURRENT_INDEX = (
    "-- nvsentinel:no-transaction\n"
    "-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block.\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS health_events_component_class_idx\n"
    "    ON health_events (component_class);\n"
)


@pytest.mark.parametrize("applier", ["python", "shell"])
def test_no_transaction_migration_runs_outside_a_transaction(
    postgres_database: PostgresDatabase, tmp_path: Path, applier: str
) -> None:
    directory = _extra_migrations(tmp_path, "0900_concurrent_index.sql", CONCURRENT_INDEX)
    if applier == "python":
        with migrator(postgres_database) as conn:
            applied = migrations.apply(conn, directory)
        assert applied[-1].name == "0900_concurrent_index.sql"
        assert not applied[-1].transactional
    else:
        result = shell_apply(postgres_database, directory=directory)
        assert result.returncode == 0, result.stderr
    with migrator(postgres_database) as conn:
        row = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = "
            "'health_events_component_class_idx'::regclass"
        ).fetchone()
    assert row == (True,)
    assert recorded(postgres_database)[-1][:2] == (900, "0900_concurrent_index.sql")


@pytest.mark.parametrize("applier", ["python", "shell"])
def test_failing_migration_is_rolled_back_and_not_recorded(
    postgres_database: PostgresDatabase, tmp_path: Path, applier: str
) -> None:
    broken = "CREATE TABLE half_done (id int);\nINSERT INTO no_such_table VALUES (1);\n"
    directory = _extra_migrations(tmp_path, "0901_broken.sql", broken)
    if applier == "python":
        with migrator(postgres_database) as conn, pytest.raises(MigrationError) as failed:
            migrations.apply(conn, directory)
        assert "0901_broken.sql" in str(failed.value)
    else:
        result = shell_apply(postgres_database, directory=directory)
        assert result.returncode != 0
        assert "no_such_table" in result.stderr
    with migrator(postgres_database) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    versions = [v for v, _, _ in recorded(postgres_database)]
    assert 901 not in versions
    assert versions == [m.version for m in migrations.load_migrations()]


def test_concurrent_appliers_serialise_on_the_advisory_lock(
    postgres_database: PostgresDatabase,
) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def python_applier() -> None:
        try:
            with migrator(postgres_database) as conn:
                start.wait()
                results.append([m.name for m in migrations.apply(conn)])
        except BaseException as err:  # reported below
            errors.append(err)

    def shell_applier() -> None:
        start.wait()
        result = shell_apply(postgres_database)
        if result.returncode != 0:
            errors.append(AssertionError(result.stderr))
        results.append(
            [line.split()[1] for line in result.stdout.splitlines() if line.startswith("applying")]
        )

    threads = [
        threading.Thread(target=python_applier),
        threading.Thread(target=python_applier),
        threading.Thread(target=shell_applier),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    everything = [m.name for m in migrations.load_migrations()]
    assert sorted(results, key=len)[-1] == everything
    assert sum(len(r) for r in results) == len(everything)


def test_cli_schema_status_then_apply(
    postgres_database: PostgresDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    env = postgres_database.datastore_env(user=MIGRATION_USER)
    assert cli.main(["schema", "status"], env=env) == cli.EXIT_UNHEALTHY
    pending = capsys.readouterr().out
    assert "pending  0001  0001_nvsentinel_schema.sql" in pending

    assert cli.main(["schema", "apply"], env=env) == cli.EXIT_OK
    applied = capsys.readouterr()
    assert "applying 0001_nvsentinel_schema.sql" in applied.err
    assert "schema version" in applied.out

    assert cli.main(["schema", "status"], env=env) == cli.EXIT_OK
    assert "pending" not in capsys.readouterr().out


def _pre_release_database(database: PostgresDatabase) -> None:
    with migrator(database) as conn:
        write_pre_release_history(conn)


@pytest.mark.parametrize("applier", ["python", "shell"])
def test_pre_release_history_is_refused_by_both_appliers_before_anything_changes(
    postgres_database: PostgresDatabase, applier: str
) -> None:
    _pre_release_database(postgres_database)
    if applier == "python":
        with migrator(postgres_database) as conn, pytest.raises(MigrationError) as refused:
            migrations.apply(conn)
        message = str(refused.value)
    else:
        result = shell_apply(postgres_database)
        assert result.returncode != 0
        message = result.stderr
    assert "pre-release of the nvsentinel chart" in message
    assert "nvsentinel-store migrate" in message
    assert "'SELECT document FROM health_events'" in message
    with migrator(postgres_database) as conn:
        created = conn.execute(
            "SELECT to_regclass('nvsentinel_store_migrations'), "
            "to_regclass('nvsentinel_schema_migrations'), to_regclass('health_events')"
        ).fetchone()
        history = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert created == (None, None, None)
    assert history == [(1, "0001_event_tables.sql")]


def test_status_of_both_appliers_refuses_a_pre_release_history(
    postgres_database: PostgresDatabase,
) -> None:
    _pre_release_database(postgres_database)
    with migrator(postgres_database) as conn, pytest.raises(MigrationError, match="pre-release"):
        migrations.status(conn)
    result = shell_apply(postgres_database, "status")
    assert result.returncode == 1 and result.stdout == ""
    assert "pre-release of the nvsentinel chart" in result.stderr
    assert "psql -AtX -c 'SELECT document FROM health_events'" in result.stderr


def test_another_tools_schema_migrations_table_is_not_taken_for_the_pre_release_one(
    postgres_database: PostgresDatabase,
) -> None:
    """golang-migrate's schema_migrations (no checksum column) is left alone; ours applies."""
    with migrator(postgres_database) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (20240101, false)")
        applied = migrations.apply(conn)
    assert [m.name for m in applied] == [m.name for m in migrations.load_migrations()]
    with migrator(postgres_database) as conn:
        untouched = conn.execute("SELECT version, dirty FROM schema_migrations").fetchall()
    assert untouched == [(20240101, False)]
