"""The extraction trigger on NVSentinel's tables: a writer may supply only the document.

NVSentinel's own columns (node_name, node_quarantined, event_id, status, ...)
are filled from the document only on a document-only write; a statement that
names them (NVSentinel's inserts and updates, a column-only UPDATE) keeps them
as written. This project's columns (agent, is_fatal, quarantine_status, ...)
follow the document whenever the document changes. Row ids are UUIDs derived
from the document's ``_id`` (``nvsentinel_document_uuid``); the document keeps
its ``_id`` as written, and one without ``_id`` gets none.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from devsupport.nvsentinel import NVSENTINEL_MAINTENANCE_COLUMNS
from nvsentinel_store.providers.postgresql.provider import PostgresStore

pytestmark = pytest.mark.datastore

Conn = psycopg.Connection[tuple[object, ...]]

LOWER_CASE_HEALTH_EVENT: dict[str, Any] = {
    "createdAt": "2026-03-01T10:00:00Z",
    "healthevent": {
        "version": 1,
        "agent": "gpu-health-monitor",
        "componentclass": "GPU",
        "checkname": "GpuXidError",
        "isfatal": True,
        "ishealthy": False,
        "message": "XID 79",
        "recommendedaction": 15,
        "errorcode": ["79"],
        "generatedtimestamp": {"seconds": 1772359200, "nanos": 250000000},
        "nodename": "node-a",
        "processingstrategy": 1,
    },
    "healtheventstatus": {
        "nodequarantined": "Quarantined",
        "userpodsevictionstatus": {"status": "InProgress", "message": ""},
        "faultremediated": False,
        "lastremediationtimestamp": "2026-03-01T10:05:00.5+00:00",
    },
}

CAMEL_CASE_HEALTH_EVENT: dict[str, Any] = {
    "createdAt": {"$date": "2026-03-01T10:00:00Z"},
    "healthEvent": {
        "agent": "gpu-health-monitor",
        "componentClass": "GPU",
        "checkName": "GpuXidError",
        "isFatal": True,
        "isHealthy": False,
        "recommendedAction": 15,
        "generatedTimestamp": {"seconds": "1772359200", "nanos": 250000000},
        "nodeName": "node-a",
        "processingStrategy": 1,
    },
    "healthEventStatus": {
        "nodeQuarantined": "Quarantined",
        "userPodsEvictionStatus": {"status": "InProgress", "message": ""},
        "faultRemediated": False,
        "lastRemediationTimestamp": {"$date": {"$numberLong": "1772359500500"}},
    },
}

#: This project's columns (0002_change_capture.sql): always the document's values.
OUR_HEALTH_COLUMNS = (
    "agent, component_class, check_name, is_fatal, is_healthy, recommended_action_code, "
    "processing_strategy, event_timestamp, quarantine_status, eviction_status, remediated, "
    "last_remediation_at"
)
OUR_HEALTH_VALUES = (
    "gpu-health-monitor",
    "GPU",
    "GpuXidError",
    True,
    False,
    15,
    1,
    datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC),
    "Quarantined",
    "InProgress",
    False,
    datetime(2026, 3, 1, 10, 5, 0, 500000, tzinfo=UTC),
)

#: NVSentinel's columns (its schema version 3), as its own inserts fill them.
NVSENTINEL_HEALTH_COLUMNS = (
    "node_name, event_type, severity, recommended_action, node_quarantined, "
    "user_pods_eviction_status, user_pods_eviction_message, fault_remediated, "
    "last_remediation_timestamp, quarantine_finish_timestamp, drain_finish_timestamp, created_at"
)
NVSENTINEL_HEALTH_VALUES = (
    "node-a",
    "GpuXidError",  # NVSentinel's event_type is the check name
    "GPU",  # and its severity the component class
    "RESTART_VM",  # its RecommendedAction enum name for 15
    "Quarantined",
    "InProgress",
    "",
    False,
    datetime(2026, 3, 1, 10, 5, 0, 500000, tzinfo=UTC),
    None,
    None,
    datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
)

NVSENTINEL_HEALTH_INSERT = """
INSERT INTO health_events (
    node_name, event_type, severity, recommended_action,
    node_quarantined, quarantine_finish_timestamp,
    user_pods_eviction_status, user_pods_eviction_message,
    drain_finish_timestamp, fault_remediated, last_remediation_timestamp,
    document
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""


def insert(conn: Conn, table: str, document: dict[str, Any]) -> str:
    row = conn.execute(
        f"INSERT INTO {table} (document) VALUES (%s) RETURNING id", (Jsonb(document),)
    ).fetchone()
    assert row is not None
    return str(row[0])


def columns(conn: Conn, table: str, names: str, row_id: str) -> tuple[object, ...]:
    row = conn.execute(f"SELECT {names} FROM {table} WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return row


def derived_uuid(text: str) -> str:
    """nvsentinel_document_uuid for an `_id` that is not a UUID: md5('nvsentinel:' || text)."""
    return str(uuid.UUID(hashlib.md5(f"nvsentinel:{text}".encode()).hexdigest()))


def test_lower_case_and_camel_case_documents_fill_the_same_columns(app_conn: Conn) -> None:
    lower = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    camel = insert(app_conn, "health_events", CAMEL_CASE_HEALTH_EVENT)
    for row_id in (lower, camel):
        assert columns(app_conn, "health_events", OUR_HEALTH_COLUMNS, row_id) == OUR_HEALTH_VALUES
        assert (
            columns(app_conn, "health_events", NVSENTINEL_HEALTH_COLUMNS, row_id)
            == NVSENTINEL_HEALTH_VALUES
        )


def test_new_event_without_status_has_null_status_columns(app_conn: Conn) -> None:
    row_id = insert(
        app_conn,
        "health_events",
        {"healthevent": {"nodename": "n"}, "healtheventstatus": {"nodequarantined": ""}},
    )
    ours = columns(
        app_conn, "health_events", "quarantine_status, eviction_status, remediated", row_id
    )
    assert ours == (None, None, None)
    theirs = columns(
        app_conn,
        "health_events",
        "node_quarantined, user_pods_eviction_status, fault_remediated, created_at, updated_at",
        row_id,
    )
    # NVSentinel's column default for the eviction status; created_at is the insert time.
    assert theirs[:3] == (None, "NotStarted", None)
    assert isinstance(theirs[3], datetime) and theirs[3] == theirs[4]


def test_document_without_id_gets_a_generated_row_id_and_none_written_into_it(
    app_conn: Conn, store: PostgresStore
) -> None:
    document = {"healthevent": {"nodename": "no-id-node"}}
    row_id = insert(app_conn, "health_events", document)
    assert uuid.UUID(row_id).version == 4  # uuid_generate_v4(), NVSentinel's column default
    stored = columns(app_conn, "health_events", "document", row_id)[0]
    assert stored == document
    # Readers see the row id as the document's _id, and find the row by it.
    events = store.collection("health_events")
    assert events.find_one({"healthevent.nodename": "no-id-node"}) == {"_id": row_id, **document}
    assert events.find_one({"_id": row_id}) == {"_id": row_id, **document}


@pytest.mark.parametrize(
    ("document_id", "expected"),
    [
        ("given-id", derived_uuid("given-id")),
        ({"$oid": "65f0c0ffee0000000000abcd"}, derived_uuid("65f0c0ffee0000000000abcd")),
        (42, derived_uuid("42")),
        ("6F9619FF-8B86-D011-B42D-00C04FC964FF", "6f9619ff-8b86-d011-b42d-00c04fc964ff"),
        ("6f9619ff8b86d011b42d00c04fc964ff", "6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    ],
    ids=["string", "objectid", "number", "uuid", "uuid-without-hyphens"],
)
def test_document_id_derives_the_row_uuid_and_stays_in_the_document_as_written(
    app_conn: Conn, store: PostgresStore, document_id: Any, expected: str
) -> None:
    document = {"_id": document_id, "healthevent": {"nodename": "n"}}
    assert insert(app_conn, "health_events", document) == expected
    assert columns(app_conn, "health_events", "document", expected) == (document,)
    row = app_conn.execute(
        "SELECT nvsentinel_document_uuid(%s)::text", (Jsonb(document_id),)
    ).fetchone()
    assert row == (expected,)
    if not isinstance(document_id, dict):
        assert store.collection("health_events").find_one({"_id": document_id}) == document


def test_the_same_document_id_always_lands_on_the_same_row(app_conn: Conn) -> None:
    insert(app_conn, "health_events", {"_id": "twice"})
    with pytest.raises(psycopg.errors.UniqueViolation, match="health_events_pkey"):
        insert(app_conn, "health_events", {"_id": "twice", "other": True})
    row = app_conn.execute(
        "SELECT count(*) FROM health_events WHERE id = %s", (derived_uuid("twice"),)
    ).fetchone()
    assert row == (1,)


def changelog_versions(conn: Conn, row_id: str) -> list[tuple[object, ...]]:
    """(operation, version) of the document's changes, in change order."""
    return conn.execute(
        "SELECT operation, version FROM datastore_changelog WHERE record_id = %s ORDER BY id",
        (row_id,),
    ).fetchall()


def test_version_starts_at_one_and_rises_with_each_update(app_conn: Conn) -> None:
    """Versions are kept outside the event tables and stamped on each change record."""
    row_id = insert(
        app_conn, "health_events", {"_id": "versioned", "healthevent": {"nodename": "n"}}
    )
    assert changelog_versions(app_conn, row_id) == [("INSERT", 1)]
    for _ in range(2):
        app_conn.execute(
            "UPDATE health_events SET document = document || '{\"x\": 1}' WHERE id = %s",
            (row_id,),
        )
    # A column-only UPDATE is a change of the row too.
    app_conn.execute("UPDATE health_events SET node_quarantined = 'X' WHERE id = %s", (row_id,))
    app_conn.execute("DELETE FROM health_events WHERE id = %s", (row_id,))
    assert changelog_versions(app_conn, row_id) == [
        ("INSERT", 1),
        ("UPDATE", 2),
        ("UPDATE", 3),
        ("UPDATE", 4),
        ("DELETE", 4),  # the version deleted
    ]
    # Written anew under the same _id: version 1 again.
    assert insert(app_conn, "health_events", {"_id": "versioned"}) == row_id
    assert changelog_versions(app_conn, row_id)[-1] == ("INSERT", 1)


def test_id_cannot_change_on_update(app_conn: Conn) -> None:
    without_id = insert(app_conn, "health_events", {"healthevent": {"nodename": "n"}})
    with_id = insert(app_conn, "health_events", {"_id": "mine", "healthevent": {"nodename": "n"}})
    for row_id in (without_id, with_id):
        with pytest.raises(psycopg.errors.CheckViolation, match="immutable"):
            app_conn.execute(
                "UPDATE health_events SET document = jsonb_set(document, '{_id}', '\"other\"') "
                "WHERE id = %s",
                (row_id,),
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="immutable"):
            app_conn.execute(
                "UPDATE health_events SET id = uuid_generate_v4() WHERE id = %s", (row_id,)
            )
    # Writing the row id into a document without _id names the same row: allowed
    # (a reader that replaces the whole document writes back the _id it read).
    app_conn.execute(
        "UPDATE health_events SET document = document || jsonb_build_object('_id', id::text) "
        "WHERE id = %s",
        (without_id,),
    )
    assert columns(app_conn, "health_events", "document ->> '_id'", without_id) == (without_id,)


def test_removing_the_id_from_a_document_is_refused(app_conn: Conn) -> None:
    """Readers would see the row id as `_id` instead of the one written: the `_id` changed."""
    row_id = insert(app_conn, "health_events", {"_id": "kept", "healthevent": {"nodename": "n"}})
    with pytest.raises(psycopg.errors.CheckViolation, match="immutable"):
        app_conn.execute(
            "UPDATE health_events SET document = document - '_id' WHERE id = %s", (row_id,)
        )
    assert columns(app_conn, "health_events", "document ->> '_id'", row_id) == ("kept",)


def test_update_of_the_document_refreshes_every_column(app_conn: Conn) -> None:
    """A document-only UPDATE (this project's writers): NVSentinel's columns follow too."""
    row_id = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    before = columns(app_conn, "health_events", "updated_at", row_id)[0]
    app_conn.execute(
        "UPDATE health_events SET document = jsonb_set(jsonb_set(document, "
        "'{healtheventstatus,faultremediated}', 'true'), "
        "'{healtheventstatus,nodequarantined}', '\"UnQuarantined\"') WHERE id = %s",
        (row_id,),
    )
    remediated, fault_remediated, quarantine, node_quarantined, created, updated = columns(
        app_conn,
        "health_events",
        "remediated, fault_remediated, quarantine_status, node_quarantined, created_at, updated_at",
        row_id,
    )
    assert (remediated, fault_remediated) == (True, True)
    assert (quarantine, node_quarantined) == ("UnQuarantined", "UnQuarantined")
    assert created == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert isinstance(updated, datetime) and isinstance(before, datetime) and updated > before


def test_a_document_that_is_not_an_object_is_refused(app_conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="JSON object"):
        app_conn.execute("INSERT INTO health_events (document) VALUES ('[1, 2]')")


def test_nvsentinel_insert_keeps_a_null_eviction_status_although_the_document_says_in_progress(
    app_conn: Conn,
) -> None:
    """NVSentinel's platform connector inserts InProgress as NULL; the column stays NULL."""
    row = app_conn.execute(
        NVSENTINEL_HEALTH_INSERT,
        (
            "node-a",
            "GpuXidError",
            "GPU",
            "RESTART_VM",
            None,  # node_quarantined, although the document says Quarantined
            None,
            None,  # user_pods_eviction_status: NULL instead of InProgress
            "",
            None,
            None,
            None,
            Jsonb(LOWER_CASE_HEALTH_EVENT),
        ),
    ).fetchone()
    assert row is not None
    row_id = str(row[0])
    assert columns(
        app_conn,
        "health_events",
        "node_quarantined, user_pods_eviction_status, fault_remediated, last_remediation_timestamp",
        row_id,
    ) == (None, None, None, None)
    # This project's columns follow the document; created_at is the document's time.
    assert columns(app_conn, "health_events", OUR_HEALTH_COLUMNS, row_id) == OUR_HEALTH_VALUES
    assert columns(app_conn, "health_events", "created_at", row_id) == (
        datetime(2026, 3, 1, 10, tzinfo=UTC),
    )
    assert columns(app_conn, "health_events", "document", row_id) == (LOWER_CASE_HEALTH_EVENT,)


def test_nvsentinel_status_update_keeps_its_columns_and_ours_follow_the_document(
    app_conn: Conn,
) -> None:
    """NVSentinel's UpdateHealthEventStatus shape: columns, document and updated_at together."""
    row_id = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    app_conn.execute(
        "UPDATE health_events SET fault_remediated = NULL, "
        "document = jsonb_set(document, '{healtheventstatus,faultremediated}', "
        "jsonb_build_object('value', true)), updated_at = now() WHERE id = %s",
        (row_id,),
    )
    assert columns(app_conn, "health_events", "fault_remediated, remediated", row_id) == (
        None,
        True,
    )


def test_column_only_update_of_a_maintenance_event_stays_as_written(app_conn: Conn) -> None:
    row_id = insert(app_conn, "maintenance_events", MAINTENANCE_EVENT)
    before = columns(app_conn, "maintenance_events", "*", row_id)
    app_conn.execute("UPDATE maintenance_events SET status = 'X'")
    status, document, updated_at = columns(
        app_conn, "maintenance_events", "status, document, updated_at", row_id
    )
    assert (status, document) == ("X", MAINTENANCE_EVENT)
    after = app_conn.execute("SELECT * FROM maintenance_events WHERE id = %s", (row_id,))
    names = [c.name for c in after.description or []]
    changed = {
        name
        for name, old, new in zip(names, before, after.fetchone() or (), strict=True)
        if old != new
    }
    # Only the column written; the change is recorded all the same.
    assert changed == {"status"}
    assert updated_at == before[names.index("updated_at")]
    assert changelog_versions(app_conn, row_id) == [("INSERT", 1), ("UPDATE", 2)]


def test_column_only_update_of_a_health_event_stays_as_written(app_conn: Conn) -> None:
    row_id = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    app_conn.execute(
        "UPDATE health_events SET node_quarantined = 'UnQuarantined', "
        "user_pods_eviction_status = 'Succeeded' WHERE id = %s",
        (row_id,),
    )
    assert columns(
        app_conn,
        "health_events",
        "node_quarantined, user_pods_eviction_status, quarantine_status, eviction_status, document",
        row_id,
    ) == ("UnQuarantined", "Succeeded", "Quarantined", "InProgress", LOWER_CASE_HEALTH_EVENT)


def test_value_wrapped_booleans_extract_to_true(app_conn: Conn) -> None:
    """NVSentinel writes booleans as {"value": true} (jsonb_build_object('value', ...))."""
    row_id = insert(
        app_conn,
        "health_events",
        {
            "healthevent": {
                "nodename": "n",
                "isfatal": {"value": True},
                "ishealthy": {"value": True},
            },
            "healtheventstatus": {"faultremediated": {"value": True}},
        },
    )
    assert columns(
        app_conn, "health_events", "is_fatal, is_healthy, remediated, fault_remediated", row_id
    ) == (True, True, True, True)


IMPOSSIBLE_TIMESTAMPS = [
    "2026-02-30T00:00:00Z",
    "2026-03-01T25:00:00Z",
    1e300,
    {"seconds": "-999999999999"},
]


@pytest.mark.parametrize(
    "value", IMPOSSIBLE_TIMESTAMPS, ids=["30-february", "hour-25", "1e300", "seconds-out-of-range"]
)
def test_impossible_timestamps_leave_the_columns_null_and_the_document_as_written(
    app_conn: Conn, value: Any
) -> None:
    health = json.dumps(
        {
            "createdAt": value,
            "healthevent": {"nodename": "n", "generatedtimestamp": value},
            "healtheventstatus": {
                "lastremediationtimestamp": value,
                "quarantinefinishtimestamp": value,
                "drainfinishtimestamp": value,
            },
        }
    )
    maintenance = json.dumps(
        {
            "eventId": "bad-times",
            "createdAt": value,
            "scheduledStartTime": value,
            "actualEndTime": value,
            "eventReceivedTimestamp": value,
            "lastUpdatedTimestamp": value,
        }
    )
    inserted = app_conn.execute(
        "INSERT INTO health_events (document) VALUES (%s::jsonb) RETURNING id", (health,)
    ).fetchone()
    assert inserted is not None
    health_row = app_conn.execute(
        "SELECT event_timestamp, last_remediation_at, last_remediation_timestamp, "
        "quarantine_finish_timestamp, drain_finish_timestamp, "
        "created_at = updated_at, document = %s::jsonb FROM health_events WHERE id = %s",
        (health, inserted[0]),
    ).fetchone()
    # created_at is NOT NULL: the insert time stands in.
    assert health_row == (None, None, None, None, None, True, True)

    inserted = app_conn.execute(
        "INSERT INTO maintenance_events (document) VALUES (%s::jsonb) RETURNING id", (maintenance,)
    ).fetchone()
    assert inserted is not None
    maintenance_row = app_conn.execute(
        "SELECT scheduled_start_time, actual_end_time, "
        "event_received_timestamp = updated_at, last_updated_timestamp = updated_at, "
        "created_at = updated_at, document = %s::jsonb FROM maintenance_events WHERE id = %s",
        (maintenance, inserted[0]),
    ).fetchone()
    assert maintenance_row == (None, None, True, True, True, True)

    # A document-only update to the same values is stored as written too.
    good = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    app_conn.execute(
        "UPDATE health_events SET document = jsonb_set(document, "
        "'{healtheventstatus,lastremediationtimestamp}', %s::jsonb) WHERE id = %s",
        (json.dumps(value), good),
    )
    updated = app_conn.execute(
        "SELECT last_remediation_at, last_remediation_timestamp, "
        "document #> '{healtheventstatus,lastremediationtimestamp}' = %s::jsonb "
        "FROM health_events WHERE id = %s",
        (json.dumps(value), good),
    ).fetchone()
    assert updated == (None, None, True)


MAINTENANCE_EVENT: dict[str, Any] = {
    "eventId": "gcp-maint-1",
    "csp": "gcp",
    "clusterName": "cluster-1",
    "resourceType": "instance",
    "resourceId": "vm-1",
    "maintenanceType": "SCHEDULED",
    "status": "DETECTED",
    "cspStatus": "PENDING",
    "scheduledStartTime": "2026-04-01T00:00:00Z",
    "scheduledEndTime": "2026-04-01T02:00:00Z",
    "eventReceivedTimestamp": "2026-03-30T12:00:00Z",
    "lastUpdatedTimestamp": "2026-03-30T12:00:00Z",
    "recommendedAction": "RESTART_VM",
    "nodeName": "node-b",
}

#: NVSentinel's columns of maintenance_events: the table has no columns of ours
#: (NVSentinel's watchers hand out its whole rows as documents).
MAINTENANCE_COLUMNS = (
    "event_id, csp, cluster_name, node_name, status, csp_status, scheduled_start_time, "
    "actual_end_time, event_received_timestamp, last_updated_timestamp"
)
MAINTENANCE_VALUES = (
    "gcp-maint-1",
    "gcp",
    "cluster-1",
    "node-b",
    "DETECTED",
    "PENDING",
    datetime(2026, 4, 1, tzinfo=UTC),
    None,
    datetime(2026, 3, 30, 12, tzinfo=UTC),
    datetime(2026, 3, 30, 12, tzinfo=UTC),
)


def test_maintenance_document_fills_every_column_and_event_id_is_unique(app_conn: Conn) -> None:
    row_id = insert(app_conn, "maintenance_events", MAINTENANCE_EVENT)
    assert uuid.UUID(row_id).version == 4  # no _id: the row id is generated, not the event id
    assert columns(app_conn, "maintenance_events", MAINTENANCE_COLUMNS, row_id) == (
        MAINTENANCE_VALUES
    )
    assert columns(app_conn, "maintenance_events", "document", row_id) == (MAINTENANCE_EVENT,)
    with pytest.raises(psycopg.errors.UniqueViolation, match="event_id"):
        insert(app_conn, "maintenance_events", {**MAINTENANCE_EVENT, "_id": "another-id"})


def test_nvsentinel_maintenance_upsert_keeps_its_columns(app_conn: Conn) -> None:
    """NVSentinel's insert names event_id and the other columns: they stay as written."""
    row = app_conn.execute(
        "INSERT INTO maintenance_events (event_id, csp, cluster_name, node_name, status, "
        "csp_status, scheduled_start_time, actual_end_time, event_received_timestamp, "
        "last_updated_timestamp, document) VALUES ('gcp-maint-1', 'gcp', 'cluster-1', 'node-b', "
        "'QUARANTINE_TRIGGERED', NULL, NULL, NULL, '2026-03-30T12:00:00Z', "
        "'2026-03-30T13:00:00Z', %s) RETURNING id",
        (Jsonb(MAINTENANCE_EVENT),),
    ).fetchone()
    assert row is not None
    row_id = str(row[0])
    expected = list(MAINTENANCE_VALUES)
    expected[4:7] = ["QUARANTINE_TRIGGERED", None, None]  # status, csp_status, scheduled start
    expected[9] = datetime(2026, 3, 30, 13, tzinfo=UTC)  # last_updated_timestamp
    assert columns(app_conn, "maintenance_events", MAINTENANCE_COLUMNS, row_id) == tuple(expected)


def test_maintenance_events_has_only_nvsentinels_columns(app_conn: Conn) -> None:
    names = app_conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'maintenance_events'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert [n for (n,) in names] == list(NVSENTINEL_MAINTENANCE_COLUMNS)


def test_lower_case_maintenance_keys_are_read_too(app_conn: Conn) -> None:
    lowered = {k.lower(): v for k, v in MAINTENANCE_EVENT.items()}
    row_id = insert(app_conn, "maintenance_events", lowered)
    assert columns(app_conn, "maintenance_events", MAINTENANCE_COLUMNS, row_id) == (
        MAINTENANCE_VALUES
    )


def test_maintenance_document_without_nvsentinels_required_fields_is_still_stored(
    app_conn: Conn,
) -> None:
    """NOT NULL columns of NVSentinel's: event_id falls back to the row id, others to ''/now()."""
    row_id = insert(app_conn, "maintenance_events", {"resourceId": "vm-9"})
    row = columns(
        app_conn,
        "maintenance_events",
        "event_id, csp, cluster_name, status, event_received_timestamp = updated_at, "
        "last_updated_timestamp = updated_at, document",
        row_id,
    )
    assert row == (row_id, "", "", "", True, True, {"resourceId": "vm-9"})


def test_nvsentinel_generic_insert_into_data_is_stored_as_the_document(app_conn: Conn) -> None:
    """NVSentinel's generic InsertMany names a `data` column: its value becomes the document."""
    row = app_conn.execute(
        "INSERT INTO health_events (data) VALUES (%s) RETURNING id",
        (Jsonb(LOWER_CASE_HEALTH_EVENT),),
    ).fetchone()
    assert row is not None
    row_id = str(row[0])
    assert columns(app_conn, "health_events", "document, data", row_id) == (
        LOWER_CASE_HEALTH_EVENT,
        None,
    )
    assert columns(app_conn, "health_events", OUR_HEALTH_COLUMNS, row_id) == OUR_HEALTH_VALUES
    assert (
        columns(app_conn, "health_events", NVSENTINEL_HEALTH_COLUMNS, row_id)
        == NVSENTINEL_HEALTH_VALUES
    )


def test_copy_of_documents_fills_the_columns(app_conn: Conn) -> None:
    """A bulk import (COPY) only supplies documents too."""
    with app_conn.cursor() as cur, cur.copy("COPY health_events (document) FROM STDIN") as copy:
        for node in ("copy-1", "copy-2"):
            copy.write_row((json.dumps({"healthevent": {"nodeName": node, "isFatal": True}}),))
    rows = app_conn.execute(
        "SELECT node_name, is_fatal FROM health_events WHERE node_name LIKE 'copy-%' ORDER BY 1"
    ).fetchall()
    assert rows == [("copy-1", True), ("copy-2", True)]
