"""NVSentinel's schema contract, proven with NVSentinel's own migration files.

1. NVSentinel's three files, applied with ``psql -v ON_ERROR_STOP=1`` to a
   database our migrations set up, succeed and change nothing: the catalog
   (tables, columns, indexes, functions, triggers, grants) is the same before
   and after. The one exception is the text of NVSentinel's own functions,
   which its files install again in NVSentinel's words; for those the test
   shows the same observable behaviour instead: the same change log rows and
   the same notifications for the same writes.
2. Our migrations, applied to a database NVSentinel's files created and
   NVSentinel-shaped writes filled, succeed, keep every row, and our lossless
   stream then delivers new changes there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devsupport.nvsentinel import NVSENTINEL_MAINTENANCE_COLUMNS, apply_nvsentinel_migrations
from devsupport.postgres import APP_USER, MIGRATION_USER, PostgresDatabase
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions
from nvsentinel_store.store import WatchOptions
from tests.datastore.conftest import apply_schema

pytestmark = pytest.mark.datastore

#: Functions NVSentinel's files define; their text is NVSentinel's after its files run.
NVSENTINEL_FUNCTIONS = ("log_table_changes", "cleanup_changelog", "mark_changelog_processed")

CATALOG_QUERIES: dict[str, str] = {
    "tables": """
        SELECT c.relname, c.relkind::text, pg_get_userbyid(c.relowner)::text,
               coalesce(c.relacl::text, ''), c.relrowsecurity
          FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'p')
         ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''), coalesce(a.attacl::text, '')
          FROM pg_attribute AS a
          JOIN pg_class AS c ON c.oid = a.attrelid
          JOIN pg_namespace AS n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, 2""",
    "indexes": """
        SELECT i.indexname, i.tablename, i.indexdef, x.indisvalid
          FROM pg_indexes AS i
          JOIN pg_class AS c ON c.relname = i.indexname
          JOIN pg_index AS x ON x.indexrelid = c.oid
         WHERE i.schemaname = 'public'
         ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), l.lanname, p.prosecdef, p.provolatile::text,
               coalesce(p.proconfig::text, ''), pg_get_userbyid(p.proowner)::text,
               coalesce(p.proacl::text, ''),
               CASE WHEN p.proname = ANY(%(nvsentinel)s) THEN '' ELSE md5(p.prosrc) END
          FROM pg_proc AS p
          JOIN pg_namespace AS n ON n.oid = p.pronamespace
          JOIN pg_language AS l ON l.oid = p.prolang
         WHERE n.nspname = 'public'
         ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
          FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal
         ORDER BY 1, 2""",
    "policies": """
        SELECT tablename, policyname, roles::text, cmd, coalesce(qual, ''),
               coalesce(with_check, '')
          FROM pg_policies WHERE schemaname = 'public' ORDER BY 1, 2""",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "nvsentinel_versions": (
        "SELECT version, description FROM nvsentinel_schema_migrations ORDER BY 1"
    ),
    "our_versions": "SELECT version, name, checksum FROM nvsentinel_store_migrations ORDER BY 1",
}


def catalog(database: PostgresDatabase) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database.superuser_conninfo()) as conn:
        return {
            name: conn.execute(query, {"nvsentinel": list(NVSENTINEL_FUNCTIONS)}).fetchall()
            for name, query in CATALOG_QUERIES.items()
        }


def observed_changes(database: PostgresDatabase, node: str) -> dict[str, Any]:
    """What NVSentinel's code sees of an insert, an update and a delete, as its services do."""
    with psycopg.connect(database.conninfo(user=APP_USER), autocommit=True) as conn:
        conn.execute("LISTEN nvsentinel_changes")
        row = conn.execute(
            "INSERT INTO health_events (node_name, event_type, document) "
            "VALUES (%s, 'GpuXidError', %s) RETURNING id",
            (node, json.dumps({"healthevent": {"nodeName": node}})),
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE health_events SET node_quarantined = 'Quarantined', updated_at = now() "
            "WHERE id = %s",
            (row[0],),
        )
        conn.execute("DELETE FROM health_events WHERE id = %s", (row[0],))
        changes = conn.execute(
            "SELECT id, table_name, operation, "
            "old_values -> 'node_quarantined', new_values -> 'node_quarantined', "
            "old_values -> 'document', new_values -> 'document', processed "
            "FROM datastore_changelog WHERE record_id = %s ORDER BY id",
            (row[0],),
        ).fetchall()
        notes = [json.loads(n.payload) for n in conn.notifies(timeout=2, stop_after=3)]
        first = changes[0][0]
        marked = conn.execute("SELECT mark_changelog_processed(%s)", (changes[-1][0],)).fetchone()
    return {
        # change ids relative to the first, so two runs compare
        "changes": [(c[0] - first, *c[1:]) for c in changes],
        "notifications": [{**n, "id": n["id"] - first} for n in notes],
        "marked": marked,
    }


def test_nvsentinel_migrations_on_our_schema_succeed_and_change_nothing(
    schema_database: PostgresDatabase,
) -> None:
    before = catalog(schema_database)
    behaviour_before = observed_changes(schema_database, "n-1")

    apply_nvsentinel_migrations(schema_database)

    after = catalog(schema_database)
    for part, rows in before.items():
        assert after[part] == rows, part
    assert observed_changes(schema_database, "n-1") == behaviour_before
    assert behaviour_before["notifications"] == [
        {"id": 0, "table": "health_events", "operation": "INSERT"},
        {"id": 1, "table": "health_events", "operation": "UPDATE"},
        {"id": 2, "table": "health_events", "operation": "DELETE"},
    ]
    assert before["nvsentinel_versions"] == [
        (1, "initial PostgreSQL schema"),
        (2, "reconcile historical Go runtime DDL"),
        (3, "health event idempotency index"),
    ]


def nvsentinel_write(conn: psycopg.Connection[Any], node: str, key: str) -> str:
    """A health event as NVSentinel's InsertHealthEvents writes it (columns it names)."""
    document = {
        "createdAt": "2026-11-30T10:00:00.123456Z",
        "healthevent": {
            "nodeName": node,
            "checkName": "GpuXidError",
            "isFatal": True,
            "agent": "gpu-health-monitor",
            "metadata": {"idempotencyKey": key},
        },
        "healtheventstatus": {
            "nodequarantined": None,
            "userpodsevictionstatus": {"status": "InProgress"},
        },
    }
    conn.execute(
        "INSERT INTO health_events (node_name, event_type, severity, recommended_action, "
        "node_quarantined, user_pods_eviction_status, document) "
        "VALUES (%s, 'GpuXidError', 'GPU', 'RESTART_BM', NULL, NULL, %s)",
        (node, json.dumps(document)),
    )
    row = conn.execute(
        "SELECT id::text FROM health_events WHERE document #>> "
        "'{healthevent,metadata,idempotencyKey}' = %s",
        (key,),
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def nvsentinel_database(postgres_database: PostgresDatabase) -> Iterator[PostgresDatabase]:
    """NVSentinel's three files applied by the migration role, and rows written its way."""
    apply_nvsentinel_migrations(postgres_database)
    with psycopg.connect(postgres_database.conninfo(user=MIGRATION_USER), autocommit=True) as conn:
        # NVSentinel's files grant nothing: its operators grant the services' role.
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO nvsentinel_app"
        )
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO nvsentinel_app")
    yield postgres_database


def test_our_migrations_on_an_nvsentinel_database_keep_every_row_and_stream_new_changes(
    nvsentinel_database: PostgresDatabase,
) -> None:
    db = nvsentinel_database
    with psycopg.connect(db.conninfo(user=APP_USER), autocommit=True) as conn:
        ids = [nvsentinel_write(conn, f"node-{n}", f"key-{n}") for n in range(5)]
        conn.execute(
            "INSERT INTO maintenance_events (event_id, csp, cluster_name, node_name, status, "
            "event_received_timestamp, document) VALUES ('m-1', 'gcp', 'c1', 'node-1', "
            '\'DETECTED\', now(), \'{"eventId": "m-1", "resourceType": "vm"}\')'
        )
        conn.execute(
            "INSERT INTO resume_tokens (client_name, resume_token) "
            "VALUES ('fault-quarantine', '{\"eventID\": 3}')"
        )
    rows_before = rows_of(db)

    apply_schema(db)

    rows_after = rows_of(db)
    for table, rows in rows_before.items():
        assert {k: v for k, v in rows_after.items() if k == table}[table] == rows, table
    with psycopg.connect(db.conninfo(user=APP_USER)) as conn:
        extracted = conn.execute(
            "SELECT node_name, user_pods_eviction_status, agent, is_fatal, eviction_status "
            "FROM health_events WHERE id = %s",
            (ids[0],),
        ).fetchone()
    # NVSentinel's columns as it wrote them; ours filled from the documents.
    assert extracted == ("node-0", None, "gpu-health-monitor", True, "InProgress")

    with PostgresStore(db.conninfo(user=APP_USER), db.name, StoreOptions(max_pool_size=2)) as store:
        events = store.collection("health_events")
        stream = events.watch(options=WatchOptions(poll_interval=0.02))
        with psycopg.connect(db.conninfo(user=APP_USER), autocommit=True) as conn:
            new_id = nvsentinel_write(conn, "node-new", "key-new")
            conn.execute(
                "UPDATE health_events SET node_quarantined = 'Quarantined', updated_at = now() "
                "WHERE id = %s",
                (ids[1],),
            )
        first = stream.try_next(timeout=10)
        second = stream.try_next(timeout=10)
        assert first is not None and second is not None
        assert (first["operationType"], first["documentKey"]["_id"]) == ("insert", new_id)
        assert (second["operationType"], second["documentKey"]["_id"]) == ("update", ids[1])
        assert second["documentVersion"] == 2
        assert events.find_one({"_id": ids[1]}) is not None
        maintenance = store.collection("maintenance_events").find_one({"resourceType": "vm"})
        assert maintenance is not None and maintenance["eventId"] == "m-1"
        stream.close()


def rows_of(database: PostgresDatabase) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of NVSentinel's tables, in NVSentinel's columns only."""
    with psycopg.connect(database.superuser_conninfo()) as conn:
        return {
            "health_events": conn.execute(
                "SELECT id, node_name, event_type, severity, recommended_action, "
                "node_quarantined, user_pods_eviction_status, user_pods_eviction_message, "
                "fault_remediated, last_remediation_timestamp, document, created_at, updated_at, "
                "quarantine_finish_timestamp, drain_finish_timestamp FROM health_events ORDER BY id"
            ).fetchall(),
            "maintenance_events": conn.execute(
                "SELECT id, event_id, csp, cluster_name, node_name, status, csp_status, "
                "scheduled_start_time, actual_end_time, event_received_timestamp, "
                "last_updated_timestamp, document, created_at, updated_at "
                "FROM maintenance_events ORDER BY id"
            ).fetchall(),
            "datastore_changelog": conn.execute(
                "SELECT id, table_name, record_id, operation, old_values, new_values, changed_at, "
                "processed FROM datastore_changelog ORDER BY id"
            ).fetchall(),
            "resume_tokens": conn.execute(
                "SELECT client_name, resume_token, last_updated FROM resume_tokens ORDER BY 1"
            ).fetchall(),
            "nvsentinel_schema_migrations": conn.execute(
                "SELECT version, description, applied_at FROM nvsentinel_schema_migrations "
                "ORDER BY 1"
            ).fetchall(),
        }


def test_nvsentinel_maintenance_watchers_see_no_column_of_ours(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    """NVSentinel's watchers hand out whole maintenance_events rows as documents."""
    events = store.collection("maintenance_events")
    events.insert_one({"eventId": "m-watch", "csp": "gcp", "status": "DETECTED"})
    events.update_one({"eventId": "m-watch"}, {"$set": {"status": "MAINTENANCE_ONGOING"}})
    with psycopg.connect(schema_database.conninfo(user=APP_USER)) as conn:
        rows = conn.execute(
            "SELECT operation, old_values, new_values FROM datastore_changelog "
            "WHERE table_name = 'maintenance_events' ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == ["INSERT", "UPDATE"]
    for _, old, new in rows:
        for row in (old, new):
            assert row is None or set(row) == set(NVSENTINEL_MAINTENANCE_COLUMNS)


def gin_index(database: PostgresDatabase) -> tuple[str, list[str] | None]:
    """NVSentinel's GIN index on health_events.document: its definition and storage parameters."""
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_indexdef(c.oid), c.reloptions FROM pg_class AS c "
            "WHERE c.relname = 'idx_health_events_document_gin'"
        ).fetchone()
    assert row is not None, "idx_health_events_document_gin is missing"
    return str(row[0]), row[1]


def test_nvsentinel_gin_index_gets_a_small_pending_list_and_keeps_its_definition(
    nvsentinel_database: PostgresDatabase,
) -> None:
    """On a database NVSentinel's files made, 0006 sets only the pending list size."""
    definition, options = gin_index(nvsentinel_database)
    assert options is None
    apply_schema(nvsentinel_database)
    adopted, adopted_options = gin_index(nvsentinel_database)
    assert adopted_options == ["gin_pending_list_limit=64"]
    assert adopted == definition.replace(
        "USING gin (document)", "USING gin (document) WITH (gin_pending_list_limit='64')"
    )
    # NVSentinel's files applied again leave the setting alone.
    apply_nvsentinel_migrations(nvsentinel_database)
    assert gin_index(nvsentinel_database)[1] == ["gin_pending_list_limit=64"]
