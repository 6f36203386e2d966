"""The extraction trigger: any writer supplies only the document; PostgreSQL fills the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

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
        "userPodsEvictionStatus": {"status": "InProgress"},
        "faultRemediated": False,
        "lastRemediationTimestamp": {"$date": {"$numberLong": "1772359500500"}},
    },
}

HEALTH_COLUMNS = (
    "node_name, agent, component_class, check_name, is_fatal, is_healthy, recommended_action, "
    "processing_strategy, quarantine_status, eviction_status, fault_remediated, "
    "last_remediation_at, event_timestamp, created_at"
)


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


def test_lower_case_and_camel_case_documents_fill_the_same_columns(app_conn: Conn) -> None:
    lower = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    camel = insert(app_conn, "health_events", CAMEL_CASE_HEALTH_EVENT)
    expected = (
        "node-a",
        "gpu-health-monitor",
        "GPU",
        "GpuXidError",
        True,
        False,
        15,
        1,
        "Quarantined",
        "InProgress",
        False,
        datetime(2026, 3, 1, 10, 5, 0, 500000, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    )
    assert columns(app_conn, "health_events", HEALTH_COLUMNS, lower) == expected
    assert columns(app_conn, "health_events", HEALTH_COLUMNS, camel) == expected


def test_new_event_without_status_has_null_status_columns(app_conn: Conn) -> None:
    row_id = insert(
        app_conn,
        "health_events",
        {"healthevent": {"nodename": "n"}, "healtheventstatus": {"nodequarantined": ""}},
    )
    quarantine, eviction, remediated, created = columns(
        app_conn,
        "health_events",
        "quarantine_status, eviction_status, fault_remediated, created_at",
        row_id,
    )
    assert (quarantine, eviction, remediated) == (None, None, None)
    assert isinstance(created, datetime)  # defaults to the insert time


def test_generated_id_is_written_back_into_the_document(app_conn: Conn) -> None:
    row_id = insert(app_conn, "health_events", {"healthevent": {"nodename": "n"}})
    document = columns(app_conn, "health_events", "document", row_id)[0]
    assert isinstance(document, dict)
    assert document["_id"] == row_id
    assert len(row_id) == 36  # a UUID


def test_document_id_becomes_the_row_id(app_conn: Conn) -> None:
    assert insert(app_conn, "health_events", {"_id": "given-id"}) == "given-id"
    assert insert(app_conn, "health_events", {"_id": {"$oid": "65f0c0ffee0000000000abcd"}}) == (
        "65f0c0ffee0000000000abcd"
    )


def test_version_starts_at_one_and_rises_with_each_update(app_conn: Conn) -> None:
    row_id = insert(app_conn, "health_events", {"healthevent": {"nodename": "n"}})
    for expected in (2, 3):
        app_conn.execute(
            "UPDATE health_events SET document = document || '{\"x\": 1}' WHERE id = %s",
            (row_id,),
        )
        assert columns(app_conn, "health_events", "version", row_id) == (expected,)


def test_id_cannot_change_on_update(app_conn: Conn) -> None:
    row_id = insert(app_conn, "health_events", {"healthevent": {"nodename": "n"}})
    with pytest.raises(psycopg.errors.CheckViolation, match="immutable"):
        app_conn.execute(
            "UPDATE health_events SET document = jsonb_set(document, '{_id}', '\"other\"') "
            "WHERE id = %s",
            (row_id,),
        )


def test_update_of_the_document_refreshes_the_columns(app_conn: Conn) -> None:
    row_id = insert(app_conn, "health_events", LOWER_CASE_HEALTH_EVENT)
    app_conn.execute(
        "UPDATE health_events SET document = jsonb_set(document, "
        "'{healtheventstatus,faultremediated}', 'true') WHERE id = %s",
        (row_id,),
    )
    assert columns(app_conn, "health_events", "fault_remediated", row_id) == (True,)


def test_a_document_that_is_not_an_object_is_refused(app_conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="JSON object"):
        app_conn.execute("INSERT INTO health_events (document) VALUES ('[1, 2]')")


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


def test_maintenance_event_is_keyed_by_event_id(app_conn: Conn) -> None:
    row_id = insert(app_conn, "maintenance_events", MAINTENANCE_EVENT)
    assert row_id == "gcp-maint-1"
    row = columns(
        app_conn,
        "maintenance_events",
        "event_id, csp, cluster_name, node_name, resource_type, resource_id, maintenance_type, "
        "status, csp_status, recommended_action, scheduled_start_time, scheduled_end_time, "
        "actual_start_time, event_received_at, last_updated_at",
        row_id,
    )
    assert row == (
        "gcp-maint-1",
        "gcp",
        "cluster-1",
        "node-b",
        "instance",
        "vm-1",
        "SCHEDULED",
        "DETECTED",
        "PENDING",
        "RESTART_VM",
        datetime(2026, 4, 1, tzinfo=UTC),
        datetime(2026, 4, 1, 2, tzinfo=UTC),
        None,
        datetime(2026, 3, 30, 12, tzinfo=UTC),
        datetime(2026, 3, 30, 12, tzinfo=UTC),
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        insert(app_conn, "maintenance_events", {**MAINTENANCE_EVENT, "_id": "another-id"})


def test_lower_case_maintenance_keys_are_read_too(app_conn: Conn) -> None:
    lowered = {k.lower(): v for k, v in MAINTENANCE_EVENT.items()}
    row_id = insert(app_conn, "maintenance_events", lowered)
    assert columns(app_conn, "maintenance_events", "event_id, cluster_name", row_id) == (
        "gcp-maint-1",
        "cluster-1",
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
