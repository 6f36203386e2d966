"""``$match`` filters on change streams: pushed into SQL where possible, always re-checked.

The filtered stream must deliver exactly the events that the Python evaluation
of the same filter keeps from the unfiltered stream: the SQL part may narrow
what is read, never drop an event the filter matches.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from nvsentinel_store.providers.postgresql.change_events import event_matches, parse_pipeline
from nvsentinel_store.providers.postgresql.positions import Position
from nvsentinel_store.providers.postgresql.provider import PostgresCollection, PostgresStore
from nvsentinel_store.store import ChangeEvent, WatchOptions

pytestmark = pytest.mark.datastore

FAST = WatchOptions(poll_interval=0.02, batch_size=7)

FILTERS: list[dict[str, Any]] = [
    {"operationType": "insert"},
    {"operationType": {"$in": ["update", "replace"]}},
    {"operationType": {"$ne": "delete"}},
    {"fullDocument.healthevent.nodename": "node-1"},
    {"fullDocument.healthevent.isfatal": True},
    {"fullDocument.healthevent.errorcode": "79"},
    {"fullDocument.healtheventstatus.nodequarantined": {"$exists": True}},
    {"fullDocument.healtheventstatus.nodequarantined": {"$exists": False}},
    {"fullDocument.healtheventstatus.nodequarantined": {"$ne": "Quarantined"}},
    {"fullDocument.healtheventstatus.nodequarantined": None},
    {"fullDocument.healthevent.recommendedaction": {"$gte": 15}},
    {"fullDocument.healthevent.nodename": {"$nin": ["node-0", "node-2"]}},
    {
        "operationType": "update",
        "updateDescription.updatedFields.healtheventstatus.nodequarantined": {"$exists": True},
    },
    {"updateDescription.updatedFields.healtheventstatus.nodequarantined": "Quarantined"},
    {"updateDescription.updatedFields.healtheventstatus.nodequarantined": {"$in": [None, "x"]}},
    {
        "updateDescription.updatedFields.healtheventstatus.userpodsevictionstatus.status": {
            "$in": ["InProgress", "Succeeded"]
        }
    },
    {"updateDescription.updatedFields.healtheventstatus": {"$exists": False}},
    {
        "$or": [
            {"operationType": "delete"},
            {"updateDescription.updatedFields.healtheventstatus.faultremediated": True},
        ]
    },
    {"$nor": [{"operationType": "insert"}, {"fullDocument.healthevent.nodename": "node-1"}]},
    {"documentKey._id": "fixed-id"},
]


def workload(events: PostgresCollection) -> None:
    """Inserts, status updates in the services' order, a whole-object set, deletes."""
    ids = []
    for n in range(4):
        ids.append(
            events.insert_one(
                {
                    "_id": "fixed-id" if n == 3 else None,
                    "healthevent": {
                        "nodename": f"node-{n}",
                        "isfatal": n % 2 == 0,
                        "recommendedaction": 15 if n < 2 else 0,
                        "errorcode": ["79", "48"] if n == 0 else ["13"],
                    },
                    **({"healtheventstatus": {"nodequarantined": ""}} if n != 2 else {}),
                }
            )
        )
    for doc_id in ids:
        events.update_one(
            {"_id": doc_id}, {"$set": {"healtheventstatus.nodequarantined": "Quarantined"}}
        )
    events.update_one(
        {"_id": ids[0]},
        {"$set": {"healtheventstatus.userpodsevictionstatus": {"status": "InProgress"}}},
    )
    events.update_one(
        {"_id": ids[0]}, {"$set": {"healtheventstatus.userpodsevictionstatus.status": "Succeeded"}}
    )
    events.update_one({"_id": ids[1]}, {"$set": {"healtheventstatus.faultremediated": True}})
    events.update_one({"_id": ids[2]}, {"$set": {"healthevent.message": "no status change"}})
    events.update_one({"_id": ids[3]}, {"$unset": {"healtheventstatus": ""}})
    events.delete_one({"_id": ids[1]})
    events.delete_one({"_id": ids[3]})


def drain(stream: Any, idle: float = 0.4) -> list[ChangeEvent]:
    got = []
    last = time.monotonic()
    while time.monotonic() - last < idle:
        event = stream.try_next(timeout=0.05)
        if event is not None:
            got.append(event)
            last = time.monotonic()
    return got


def test_filtered_streams_deliver_exactly_what_the_filter_matches(store: PostgresStore) -> None:
    events = store.collection("health_events")
    everything = events.watch(options=FAST)
    filtered = [events.watch([{"$match": f}], options=FAST) for f in FILTERS]
    workload(events)
    all_events = drain(everything)
    assert len(all_events) == 4 + 9 + 2

    mismatches = {}
    for spec, stream in zip(FILTERS, filtered, strict=True):
        node = parse_pipeline([{"$match": spec}])
        expected = [e["_id"] for e in all_events if event_matches(e, node)]
        got = [e["_id"] for e in drain(stream, idle=0.1)]
        if got != expected:
            mismatches[repr(spec)] = (len(got), len(expected))
    assert mismatches == {}


def test_services_status_filters_see_the_expected_changes(store: PostgresStore) -> None:
    events = store.collection("health_events")
    quarantine = events.watch(
        [
            {
                "$match": {
                    "operationType": "update",
                    "updateDescription.updatedFields.healtheventstatus.nodequarantined": (
                        "Quarantined"
                    ),
                }
            }
        ],
        options=FAST,
    )
    eviction_path = "healtheventstatus.userpodsevictionstatus.status"
    eviction = events.watch(
        [{"$match": {f"updateDescription.updatedFields.{eviction_path}": {"$exists": True}}}],
        options=FAST,
    )
    fatal_inserts = events.watch(
        [{"$match": {"operationType": "insert", "fullDocument.healthevent.isfatal": True}}],
        options=FAST,
    )
    workload(events)
    assert len(drain(quarantine)) == 4
    assert [
        e["fullDocument"]["healtheventstatus"]["userpodsevictionstatus"]["status"]
        for e in drain(eviction)
    ] == ["InProgress", "Succeeded"]
    assert [e["fullDocument"]["healthevent"]["nodename"] for e in drain(fatal_inserts)] == [
        "node-0",
        "node-2",
    ]


def test_filters_survive_a_match_document_with_several_stages(store: PostgresStore) -> None:
    events = store.collection("health_events")
    stream = events.watch(
        [{"$match": {"operationType": "update"}}, {"$match": {"documentKey._id": "fixed-id"}}],
        options=FAST,
    )
    workload(events)
    got = drain(stream)
    assert [e["operationType"] for e in got] == ["update", "update"]
    assert {e["documentKey"]["_id"] for e in got} == {"fixed-id"}


def test_try_next_returns_at_its_timeout_while_reading_unmatched_changes(
    store: PostgresStore, app_conn: psycopg.Connection[Any]
) -> None:
    """A filter that matches nothing in a long backlog must not hold try_next past its timeout."""
    app_conn.execute(
        "INSERT INTO health_events (document) "
        "SELECT jsonb_build_object('n', g) FROM generate_series(1, 20000) AS g"
    )
    last = app_conn.execute(
        "SELECT position_txid::text, id FROM datastore_changelog "
        "ORDER BY position_txid DESC, id DESC LIMIT 1"
    ).fetchone()
    assert last is not None
    # Not pushed into SQL (checked in Python only), and matching nothing here.
    stream = store.collection("health_events").watch(
        [{"$match": {"ns.coll": "maintenance_events"}}],
        from_beginning=True,
        options=WatchOptions(batch_size=7),
    )
    assert stream.try_next(timeout=0.05) is None
    # It stopped reading at the timeout, well inside the 2,858 batches of the backlog.
    assert stream.position < Position(int(last[0]), int(last[1]))
