"""The seed's query paths use the indexes on a realistic volume (100k+ events per table).

The queries are the provider's own translations (``PostgresCollection.explain``),
so the test also proves the filter translation lands on the typed columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from devsupport.postgres import PostgresDatabase, PostgresServer
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from tests.datastore.conftest import apply_schema

pytestmark = pytest.mark.datastore

ROWS = 100_000

LOAD_HEALTH_EVENTS = """
INSERT INTO health_events (document)
SELECT jsonb_build_object(
  'createdAt', to_char(timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g),
                       'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'healthevent', jsonb_build_object(
     'nodename', 'node-' || (g %% 2000),
     'agent',
        (ARRAY['gpu-health-monitor', 'syslog-health-monitor', 'csp-health-monitor'])[1 + g %% 3],
     'checkname', 'check-' || (g %% 40),
     'componentclass', 'GPU',
     'isfatal', (g %% 50 = 0),
     'ishealthy', false,
     'recommendedaction', 15,
     'errorcode', jsonb_build_array((g %% 100)::text),
     'generatedtimestamp', jsonb_build_object('seconds', 1767225600 + g, 'nanos', 0)),
  'healtheventstatus', jsonb_build_object(
     -- Most events never quarantine a node: one in a hundred does.
     'nodequarantined', CASE g %% 100 WHEN 3 THEN 'Quarantined' WHEN 4 THEN 'AlreadyQuarantined'
                                      WHEN 5 THEN 'UnQuarantined' ELSE '' END,
     'userpodsevictionstatus', jsonb_build_object('status',
        CASE g %% 200 WHEN 3 THEN 'InProgress' WHEN 103 THEN 'Succeeded' WHEN 7 THEN 'Failed'
                      ELSE 'NotStarted' END),
     'faultremediated', CASE WHEN g %% 10 = 0 THEN NULL ELSE (g %% 100 <> 1) END))
FROM generate_series(1, %(rows)s) AS g
"""

LOAD_MAINTENANCE_EVENTS = """
INSERT INTO maintenance_events (document)
SELECT jsonb_build_object(
  'eventId', 'maint-' || g,
  'csp', (ARRAY['gcp', 'aws', 'azure', 'oci'])[1 + g %% 4],
  'clusterName', 'cluster-' || (g %% 50),
  'nodeName', 'node-' || (g %% 2000),
  'maintenanceType', 'SCHEDULED',
  'status', (ARRAY['DETECTED', 'QUARANTINE_TRIGGERED', 'MAINTENANCE_ONGOING',
                   'MAINTENANCE_COMPLETE', 'HEALTHY_TRIGGERED', 'CANCELLED'])[1 + g %% 6],
  'cspStatus', 'PENDING',
  'scheduledStartTime', to_char(timestamptz '2026-01-01 00:00:00+00' + make_interval(mins => g),
                                'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
  'actualEndTime', CASE WHEN g %% 6 = 3 THEN to_char(timestamptz '2026-01-01 00:00:00+00'
                        + make_interval(mins => g + 90), 'YYYY-MM-DD"T"HH24:MI:SS"Z"') END)
FROM generate_series(1, %(rows)s) AS g
"""


@pytest.fixture(scope="module")
def loaded_store(postgres_server: PostgresServer) -> Iterator[PostgresStore]:
    """One database for the module: loading 2 x 100k events takes a while."""
    name = postgres_server.create_database()
    database = PostgresDatabase(server=postgres_server, name=name)
    try:
        apply_schema(database)
        with psycopg.connect(database.conninfo(), autocommit=True) as conn:
            conn.execute(LOAD_HEALTH_EVENTS, {"rows": ROWS})
            conn.execute(LOAD_MAINTENANCE_EVENTS, {"rows": ROWS})
        with psycopg.connect(database.superuser_conninfo(), autocommit=True) as conn:
            conn.execute("ANALYZE health_events")
            conn.execute("ANALYZE maintenance_events")
        with PostgresStore(database.conninfo(), name) as store:
            yield store
    finally:
        postgres_server.drop_database(name)


AT = datetime(2026, 1, 1, 12, tzinfo=UTC)

#: (purpose, filter, sort, limit, the index the plan must use: one name, or a
#: tuple of names where NVSentinel's schema has two indexes that serve it).
Query = tuple[str, dict[str, Any], list[tuple[str, int]], int, str | tuple[str, ...]]

HEALTH_QUERIES: list[Query] = [
    (
        "latest events of a node",
        {"healthevent.nodename": "node-7"},
        [("createdAt", -1)],
        20,
        "health_events_node_created_idx",
    ),
    (
        "events by quarantine status",
        {"healtheventstatus.nodequarantined": "Quarantined"},
        [("createdAt", -1)],
        100,
        "health_events_quarantine_status_idx",
    ),
    (
        "events by eviction status",
        {"healtheventstatus.userpodsevictionstatus.status": "InProgress"},
        [("createdAt", -1)],
        100,
        "health_events_eviction_status_idx",
    ),
    (
        "fatal events",
        {"healthevent.isfatal": True},
        [("createdAt", -1)],
        50,
        "health_events_fatal_idx",
    ),
    (
        "events by agent and check",
        {"healthevent.agent": "gpu-health-monitor", "healthevent.checkname": "check-3"},
        [("createdAt", -1)],
        50,
        "health_events_agent_check_idx",
    ),
    (
        "unremediated events of a node",
        {"healthevent.nodename": "node-11", "healtheventstatus.faultremediated": {"$ne": True}},
        [("createdAt", -1)],
        0,
        "health_events_unremediated_idx",
    ),
    (
        "events created in a time range",
        {"createdAt": {"$gte": AT, "$lt": datetime(2026, 1, 1, 12, 5, tzinfo=UTC)}},
        [("createdAt", 1)],
        0,
        ("idx_health_events_created_desc", "idx_health_events_created_id"),
    ),
    (
        "events generated in a time range",
        {
            "healthevent.generatedtimestamp": {
                "$gte": AT,
                "$lt": datetime(2026, 1, 1, 12, 5, tzinfo=UTC),
            }
        },
        [],
        0,
        "health_events_event_timestamp_idx",
    ),
    ("one event by id", {"_id": "no-such-id"}, [], 0, "health_events_pkey"),
]

MAINTENANCE_QUERIES: list[Query] = [
    (
        "by event id",
        {"eventId": "maint-77"},
        [],
        0,
        ("maintenance_events_event_id_key", "idx_maintenance_events_event_id"),
    ),
    (
        "by csp and cluster",
        {"csp": "gcp", "clusterName": "cluster-8"},
        [],
        0,
        ("idx_maintenance_events_csp_cluster", "idx_maintenance_events_received_desc"),
    ),
    (
        "by node and status",
        {"nodeName": "node-9", "status": "DETECTED"},
        [],
        0,
        "idx_maintenance_events_node_status",
    ),
    (
        "due to start",
        {"status": "DETECTED", "scheduledStartTime": {"$lte": datetime(2026, 1, 3, tzinfo=UTC)}},
        [("scheduledStartTime", 1)],
        0,
        "idx_maintenance_events_status_scheduled",
    ),
    (
        "ended",
        {
            "status": "MAINTENANCE_COMPLETE",
            "actualEndTime": {"$gte": datetime(2026, 2, 1, tzinfo=UTC)},
        },
        [],
        0,
        "idx_maintenance_events_status_actual_end",
    ),
]


def uses(plan: str, index: str | tuple[str, ...]) -> bool:
    """Whether the plan reads one of the named indexes and scans no table sequentially."""
    names = (index,) if isinstance(index, str) else index
    return "Seq Scan" not in plan and any(re.search(rf"\b{re.escape(n)}\b", plan) for n in names)


def _plan_uses(store: PostgresStore, collection: str, query: Query) -> tuple[bool, str]:
    purpose, filter, sort, limit, index = query
    plan = store.collection(collection).explain(filter, sort, limit)
    return uses(plan, index), f"{purpose}: expected {index}, got\n{plan}"


@pytest.mark.parametrize("query", HEALTH_QUERIES, ids=[q[0] for q in HEALTH_QUERIES])
def test_health_event_query_uses_its_index(loaded_store: PostgresStore, query: Query) -> None:
    used, message = _plan_uses(loaded_store, "health_events", query)
    assert used, message


@pytest.mark.parametrize("query", MAINTENANCE_QUERIES, ids=[q[0] for q in MAINTENANCE_QUERIES])
def test_maintenance_event_query_uses_its_index(loaded_store: PostgresStore, query: Query) -> None:
    used, message = _plan_uses(loaded_store, "maintenance_events", query)
    assert used, message


def test_indexed_queries_return_the_right_documents(loaded_store: PostgresStore) -> None:
    events = loaded_store.collection("health_events")
    latest = events.find({"healthevent.nodename": "node-7"}, sort=[("createdAt", -1)], limit=3)
    assert [e["createdAt"] for e in latest] == sorted(
        (e["createdAt"] for e in latest), reverse=True
    )
    assert all(e["healthevent"]["nodename"] == "node-7" for e in latest)
    # node-7 appears for g = 7, 2007, ...; the newest has the largest g.
    assert latest[0]["healthevent"]["generatedtimestamp"]["seconds"] == 1767225600 + 98007
    fatal = events.find({"healthevent.isfatal": True})
    assert len(fatal) == ROWS // 50
    window = events.find(
        {"createdAt": {"$gte": AT, "$lt": datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)}}
    )
    assert len(window) == 10
