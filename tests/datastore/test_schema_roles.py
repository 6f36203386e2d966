"""What the application role may and may not do; the migration role owns the schema."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from devsupport.postgres import APP_GROUP, MIGRATION_USER, PostgresDatabase

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

FORBIDDEN_FOR_APP = [
    "CREATE TABLE intruder (id int)",
    "DROP TABLE health_events",
    "ALTER TABLE health_events ADD COLUMN extra text",
    "TRUNCATE health_events",
    "TRUNCATE datastore_changelog",
    "TRUNCATE datastore_consumer_positions",
    "TRUNCATE resume_tokens",
    "CREATE INDEX intruder_idx ON health_events (agent)",
    "ALTER TABLE health_events DISABLE TRIGGER health_events_extract",
    "ALTER TABLE health_events DISABLE TRIGGER health_events_changes",
    "ALTER TABLE datastore_changelog DISABLE TRIGGER datastore_changelog_position",
    # The role may insert change rows only through the event tables' triggers.
    "INSERT INTO datastore_changelog (table_name, record_id, operation, new_values)"
    " VALUES ('health_events', uuid_generate_v4(), 'INSERT', '{}')",
    # It may set NVSentinel's processed flag, nothing else.
    "UPDATE datastore_changelog SET new_values = '{}'",
    "UPDATE datastore_changelog SET position_txid = '1'",
    "DELETE FROM datastore_changelog",
    "SELECT cleanup_changelog(0)",
    "DELETE FROM datastore_changelog_pruned",
    # Documents' versions and positions move only with their change records.
    "INSERT INTO datastore_document_versions (table_name, id, version, position_txid)"
    " VALUES ('health_events', uuid_generate_v4(), 1, '1')",
    "UPDATE datastore_document_versions SET position_txid = '1'",
    "DELETE FROM datastore_document_versions",
    "UPDATE datastore_epoch SET epoch = 1",
    "SELECT * FROM datastore_adopt_restore()",
    "INSERT INTO nvsentinel_store_migrations (version, name, checksum) VALUES (999, 'x', 'y')",
    "INSERT INTO nvsentinel_schema_migrations (version, description) VALUES (4, 'x')",
    "DELETE FROM nvsentinel_schema_migrations",
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
    app_conn.execute("DELETE FROM health_events WHERE id = nvsentinel_document_uuid('\"e1\"')")
    app_conn.execute('INSERT INTO maintenance_events (document) VALUES (\'{"eventId": "m1"}\')')
    row = app_conn.execute(
        "SELECT count(*) FROM datastore_changelog WHERE record_id IN ("
        "nvsentinel_document_uuid('\"e1\"'), "
        "(SELECT id FROM maintenance_events WHERE event_id = 'm1'))"
    ).fetchone()
    assert row == (4,)
    # What NVSentinel's services do with the change log, resume tokens and schema version.
    marked = app_conn.execute(
        "SELECT mark_changelog_processed((SELECT max(id) FROM datastore_changelog))"
    ).fetchone()
    assert marked == (4,)
    app_conn.execute(
        "INSERT INTO resume_tokens (client_name, resume_token, last_updated) "
        "VALUES ('fault-quarantine', '{\"id\": 4}', now()) ON CONFLICT (client_name) "
        "DO UPDATE SET resume_token = EXCLUDED.resume_token, last_updated = EXCLUDED.last_updated"
    )
    app_conn.execute("DELETE FROM resume_tokens WHERE client_name = 'fault-quarantine'")
    version = app_conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM nvsentinel_schema_migrations"
    ).fetchone()
    assert version == (3,)


def test_migration_role_owns_every_table(schema_database: PostgresDatabase) -> None:
    with psycopg.connect(schema_database.superuser_conninfo()) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert owners == [(MIGRATION_USER,)]


def test_consumer_cannot_read_or_change_another_login_roles_positions(
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
        "INSERT INTO datastore_consumer_positions "
        "(client_name, collection, position_txid, change_id) "
        "VALUES ('fault-quarantine', 'health_events', '5', 1)"
    )
    with psycopg.connect(schema_database.conninfo(user=other), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM datastore_consumer_positions").fetchone() == (0,)
        changed = conn.execute("UPDATE datastore_consumer_positions SET change_id = 99").rowcount
        deleted = conn.execute("DELETE FROM datastore_consumer_positions").rowcount
        assert (changed, deleted) == (0, 0)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO datastore_consumer_positions (client_owner, client_name, collection, "
                "position_txid, change_id) VALUES ('nvsentinel', 'x', 'health_events', '1', 1)"
            )
        # Names and lag of every consumer are visible to health checks, positions are not.
        lag = conn.execute("SELECT client_name, client_owner FROM datastore_consumer_lag()")
        assert lag.fetchall() == [("fault-quarantine", "nvsentinel")]
    assert app_conn.execute("SELECT change_id FROM datastore_consumer_positions").fetchall() == [
        (1,)
    ]
