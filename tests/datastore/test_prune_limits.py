"""Who may prune the change history, and by how much.

Only the pruner login ``nvsentinel_pruner`` (whose certificate only the prune
CronJob mounts) and the schema owner may run ``datastore_changelog_prune``; the
services' role may not, since a prune expires every other service's consumers.
Whoever calls it, a max age below 1 hour is refused and the history stays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from devsupport.postgres import APP_GROUP, APP_USER, MIGRATION_USER, PostgresDatabase
from nvsentinel_store.errors import QueryError
from nvsentinel_store.providers.postgresql.provider import (
    PRUNE_MIN_AGE_SECONDS,
    PRUNER_ROLE,
    PostgresStore,
    PruneResult,
    StoreOptions,
)
from tests.datastore.conftest import apply_schema

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

PRUNE = "SELECT * FROM datastore_changelog_prune(%s::interval)"
#: One batch of at most two changes per collection (0005).
PRUNE_BATCH = "SELECT * FROM datastore_changelog_prune(%s::interval, 2)"
SIGNATURES = ("datastore_changelog_prune(interval)", "datastore_changelog_prune(interval, integer)")


def ensure_pruner(database: PostgresDatabase) -> None:
    """The pruner login and its EXECUTE on prune, whether or not bootstrap.sql made the role.

    0003 and 0005 grant EXECUTE only when the role exists as they run; a role
    created here after the migrations gets the same grants from the owner.
    """
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE nvsentinel_pruner LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN END $$"
        )
        missing = [
            signature
            for signature in SIGNATURES
            if conn.execute(
                "SELECT to_regprocedure(%s) IS NOT NULL "
                "AND NOT has_function_privilege('nvsentinel_pruner', %s, 'EXECUTE')",
                (signature, signature),
            ).fetchone()
            == (True,)
        ]
    if missing:
        with psycopg.connect(database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
            for signature in missing:
                conn.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO nvsentinel_pruner")


def pruner_store(database: PostgresDatabase) -> PostgresStore:
    """A store connected as the pruner (its client certificate, verify-full)."""
    ensure_pruner(database)
    return PostgresStore(
        database.conninfo(user=PRUNER_ROLE), database.name, StoreOptions(max_pool_size=1)
    )


def backdate(database: PostgresDatabase, by: str = "2 hours", consumers: str | None = None) -> None:
    """Make the retained changes older by ``by``, and the positions of ``consumers``
    (names separated by commas, ``*`` for every consumer): as if ``by`` had passed."""
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        conn.execute("UPDATE datastore_changelog SET changed_at = changed_at - %s::interval", (by,))
        if consumers is not None:
            conn.execute(
                "UPDATE datastore_consumer_positions SET updated_at = updated_at - %s::interval "
                "WHERE %s = '*' OR client_name = ANY(string_to_array(%s, ','))",
                (by, consumers, consumers),
            )


@pytest.fixture
def database(postgres_database: PostgresDatabase) -> PostgresDatabase:
    """The schema applied with the pruner role existing (as bootstrap.sql makes it first),
    three changes two hours old and one consumer silent for as long."""
    ensure_pruner(postgres_database)
    apply_schema(postgres_database)
    with psycopg.connect(postgres_database.conninfo(user=APP_USER), autocommit=True) as conn:
        for n in range(3):
            conn.execute(
                "INSERT INTO health_events (document) VALUES (%s::jsonb)",
                (f'{{"healthevent": {{"nodename": "n{n}"}}}}',),
            )
        conn.execute(
            "INSERT INTO datastore_consumer_positions "
            "(client_name, collection, position_txid, change_id) "
            "VALUES ('silent', 'health_events', '1', 0)"
        )
    backdate(postgres_database, consumers="silent")
    return postgres_database


@pytest.fixture
def superuser(database: PostgresDatabase) -> Iterator[Conn]:
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        yield conn


def history(superuser: Conn) -> tuple[object, ...]:
    """(changes retained, consumers expired, collections with a pruned frontier)."""
    row = superuser.execute(
        "SELECT (SELECT count(*) FROM datastore_changelog), "
        "(SELECT count(*) FROM datastore_consumer_positions WHERE expired_at IS NOT NULL), "
        "(SELECT count(*) FROM datastore_changelog_pruned)"
    ).fetchone()
    assert row is not None
    return row


def test_migrations_grant_prune_to_the_pruner_and_not_to_the_services(
    database: PostgresDatabase, superuser: Conn
) -> None:
    def may(role: str, signature: str) -> object:
        row = superuser.execute(
            "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)
        ).fetchone()
        assert row is not None
        return row[0]

    for signature in SIGNATURES:
        roles = (PRUNER_ROLE, APP_GROUP, APP_USER, "public")
        assert [may(role, signature) for role in roles] == [True, False, False, False], signature


@pytest.mark.parametrize("prune", [PRUNE, PRUNE_BATCH])
def test_the_services_role_cannot_prune(
    database: PostgresDatabase, superuser: Conn, prune: str
) -> None:
    with psycopg.connect(database.conninfo(user=APP_USER), autocommit=True) as conn:
        for age in ("0", "7 days"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(prune, (age,))
    assert history(superuser) == (3, 0, 0)


def test_the_pruner_prunes(database: PostgresDatabase, superuser: Conn) -> None:
    with psycopg.connect(database.conninfo(user=PRUNER_ROLE), autocommit=True) as conn:
        rows = conn.execute(PRUNE, ("1 hour",)).fetchall()
    assert rows == [("health_events", 3, 1)]
    assert history(superuser) == (0, 1, 1)


def test_the_pruner_prunes_in_batches_oldest_first(
    database: PostgresDatabase, superuser: Conn
) -> None:
    oldest = superuser.execute(
        "SELECT id FROM datastore_changelog ORDER BY position_txid, id"
    ).fetchall()
    with psycopg.connect(database.conninfo(user=PRUNER_ROLE), autocommit=True) as conn:
        assert conn.execute(PRUNE_BATCH, ("1 hour",)).fetchall() == [("health_events", 2, 1)]
        left = superuser.execute("SELECT id FROM datastore_changelog").fetchall()
        assert left == oldest[2:]
        assert history(superuser) == (1, 1, 1)
        assert conn.execute(PRUNE_BATCH, ("1 hour",)).fetchall() == [("health_events", 1, 0)]
        assert conn.execute(PRUNE_BATCH, ("1 hour",)).fetchall() == [("health_events", 0, 0)]
    assert history(superuser) == (0, 1, 1)


@pytest.mark.parametrize("size", ["0", "-1"])
def test_a_batch_size_below_one_is_refused_and_the_history_stays(
    database: PostgresDatabase, superuser: Conn, size: str
) -> None:
    with (
        psycopg.connect(database.conninfo(user=PRUNER_ROLE), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="batch_size must be at least 1"),
    ):
        conn.execute("SELECT * FROM datastore_changelog_prune('1 hour', %s::int)", (size,))
    assert history(superuser) == (3, 0, 0)


def test_the_pruner_can_do_nothing_else(database: PostgresDatabase, superuser: Conn) -> None:
    with psycopg.connect(database.conninfo(user=PRUNER_ROLE), autocommit=True) as conn:
        for statement in (
            "SELECT count(*) FROM health_events",
            "SELECT count(*) FROM datastore_changelog",
            "DELETE FROM datastore_changelog",
            "DELETE FROM datastore_consumer_positions",
            "SELECT cleanup_changelog(0)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert history(superuser) == (3, 0, 0)


@pytest.mark.parametrize("prune", [PRUNE, PRUNE_BATCH])
@pytest.mark.parametrize("user", [PRUNER_ROLE, MIGRATION_USER])
@pytest.mark.parametrize("age", ["0", "59 minutes 59 seconds", "-1 day", None])
def test_a_max_age_below_one_hour_is_refused_for_everyone_and_the_history_stays(
    database: PostgresDatabase, superuser: Conn, user: str, age: str | None, prune: str
) -> None:
    with (
        psycopg.connect(database.conninfo(user=user), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="at least 1 hour"),
    ):
        conn.execute(prune, (age,))
    assert history(superuser) == (3, 0, 0)


def test_the_store_refuses_below_the_minimum_and_names_the_pruner_role_when_denied(
    database: PostgresDatabase, superuser: Conn
) -> None:
    with pruner_store(database) as store:
        with pytest.raises(QueryError, match="at least 1 hour"):
            store.prune(PRUNE_MIN_AGE_SECONDS - 1)
        assert history(superuser) == (3, 0, 0)
        with pytest.raises(QueryError, match="batch size must be at least 1"):
            store.prune(PRUNE_MIN_AGE_SECONDS, batch_size=0)
        results = store.prune(PRUNE_MIN_AGE_SECONDS, batch_size=2)
    assert results == [PruneResult("health_events", 3, 1, batches=2)]
    with (
        PostgresStore(database.conninfo(user=APP_USER), database.name) as store,
        pytest.raises(QueryError) as denied,
    ):
        store.prune(7 * 86400)
    assert f"connect as {PRUNER_ROLE}" in str(denied.value)
    assert f"'{APP_USER}'" in str(denied.value)


def run_prune_cli(
    database: PostgresDatabase, user: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATASTORE_"))}
    env.update(database.datastore_env(user=user))
    return subprocess.run(
        [sys.executable, "-m", "nvsentinel_store.cli", "prune", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_prune_as_the_services_role_fails_in_one_line_naming_the_pruner_role(
    database: PostgresDatabase, superuser: Conn
) -> None:
    denied = run_prune_cli(database, APP_USER, "--max-age=1h")
    assert denied.returncode == 2, denied.stderr
    errors = [line for line in denied.stderr.splitlines() if line.startswith("nvsentinel-store:")]
    assert len(errors) == 1, denied.stderr
    assert f"DATASTORE_USERNAME={PRUNER_ROLE}" in errors[0]
    assert history(superuser) == (3, 0, 0)

    ensure_pruner(database)
    too_small = run_prune_cli(database, PRUNER_ROLE, "--max-age=10m")
    assert too_small.returncode == 2
    assert "at least 1 hour" in too_small.stderr
    assert history(superuser) == (3, 0, 0)

    no_batch = run_prune_cli(database, PRUNER_ROLE, "--max-age=1h", "--batch-size=0")
    assert no_batch.returncode == 2
    assert "--batch-size" in no_batch.stderr
    assert history(superuser) == (3, 0, 0)

    pruned = run_prune_cli(database, PRUNER_ROLE, "--max-age=1h", "--batch-size=2")
    assert pruned.returncode == 0, pruned.stderr
    assert (
        "health_events: deleted 3 change(s) in 2 transaction(s), expired 1 consumer(s)"
        in pruned.stdout
    )
    assert history(superuser) == (0, 1, 1)
