"""What the application role may and may not do; the migration role owns the schema."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.fixtures.postgres import APP_GROUP, MIGRATION_USER, PostgresDatabase

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

FORBIDDEN_FOR_APP = [
    "CREATE TABLE intruder (id int)",
    "DROP TABLE health_events",
    "ALTER TABLE health_events ADD COLUMN extra text",
    "TRUNCATE health_events",
    "TRUNCATE datastore_changelog",
    "CREATE INDEX intruder_idx ON health_events (agent)",
    "ALTER TABLE health_events DISABLE TRIGGER health_events_capture_insert",
    "INSERT INTO datastore_changelog (position_txid, collection, operation, document_id, version)"
    " VALUES ('1', 'health_events', 'insert', 'forged', 1)",
    "UPDATE datastore_changelog SET document = '{}'",
    "DELETE FROM datastore_changelog",
    "DELETE FROM datastore_changelog_pruned",
    "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'x', 'y')",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
]


def test_application_role_cannot_change_the_schema_or_the_history(app_conn: Conn) -> None:
    allowed = []
    for statement in FORBIDDEN_FOR_APP:
        try:
            app_conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            continue
        allowed.append(statement)
    assert allowed == []


def test_application_role_reads_and_writes_events_and_reads_the_changelog(
    app_conn: Conn,
) -> None:
    app_conn.execute('INSERT INTO health_events (document) VALUES (\'{"_id": "e1"}\')')
    app_conn.execute("UPDATE health_events SET document = document || '{\"a\": 1}'")
    app_conn.execute("DELETE FROM health_events WHERE id = 'e1'")
    app_conn.execute('INSERT INTO maintenance_events (document) VALUES (\'{"eventId": "m1"}\')')
    row = app_conn.execute(
        "SELECT count(*) FROM datastore_changelog WHERE document_id IN ('e1', 'm1')"
    ).fetchone()
    assert row == (4,)


def test_migration_role_owns_every_table(schema_database: PostgresDatabase) -> None:
    with psycopg.connect(schema_database.superuser_conninfo()) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert owners == [(MIGRATION_USER,)]


def test_consumer_cannot_read_or_change_another_login_roles_tokens(
    schema_database: PostgresDatabase, app_conn: Conn, superuser_conn: Conn
) -> None:
    other = "nvsentinel_other_service"
    superuser_conn.execute(
        sql.SQL(
            "DO $$ BEGIN CREATE ROLE {} LOGIN; EXCEPTION WHEN duplicate_object THEN END $$"
        ).format(sql.Identifier(other))
    )
    superuser_conn.execute(
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_GROUP), sql.Identifier(other))
    )
    app_conn.execute(
        "INSERT INTO resume_tokens (client_name, collection, position_txid, change_id) "
        "VALUES ('fault-quarantine', 'health_events', '5', 1)"
    )
    with psycopg.connect(schema_database.conninfo(user=other), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM resume_tokens").fetchone() == (0,)
        changed = conn.execute("UPDATE resume_tokens SET change_id = 99").rowcount
        deleted = conn.execute("DELETE FROM resume_tokens").rowcount
        assert (changed, deleted) == (0, 0)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO resume_tokens (client_owner, client_name, collection, "
                "position_txid, change_id) VALUES ('nvsentinel', 'x', 'health_events', '1', 1)"
            )
        # Names and lag of every consumer are visible to health checks, positions are not.
        lag = conn.execute("SELECT client_name, client_owner FROM datastore_consumer_lag()")
        assert lag.fetchall() == [("fault-quarantine", "nvsentinel")]
    assert app_conn.execute("SELECT change_id FROM resume_tokens").fetchall() == [(1,)]
