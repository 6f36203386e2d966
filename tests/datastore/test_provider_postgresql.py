"""The collection API on PostgreSQL: what a service does with its documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from nvsentinel_store.errors import DuplicateKeyError, QueryError
from nvsentinel_store.providers.postgresql.provider import PostgresCollection, PostgresStore
from nvsentinel_store.store import Collection, Store

pytestmark = pytest.mark.datastore


@pytest.fixture
def events(store: PostgresStore) -> PostgresCollection:
    return store.collection("health_events")


def event(node: str, created: datetime, **status: Any) -> dict[str, Any]:
    return {
        "createdAt": created,
        "healthevent": {"nodename": node, "agent": "gpu-health-monitor", "isfatal": False},
        "healtheventstatus": {"nodequarantined": "", **status},
    }


def day(n: int) -> datetime:
    return datetime(2026, 1, n, tzinfo=UTC)


def test_provider_satisfies_the_store_protocols(store: PostgresStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.collection("health_events"), Collection)


def test_insert_then_find_by_id_returns_the_stored_document(events: PostgresCollection) -> None:
    doc_id = events.insert_one(event("n1", day(1)))
    found = events.find_one({"_id": doc_id})
    assert found == {
        "_id": doc_id,
        "createdAt": "2026-01-01T00:00:00.000000Z",
        "healthevent": {"nodename": "n1", "agent": "gpu-health-monitor", "isfatal": False},
        "healtheventstatus": {"nodequarantined": ""},
    }


def test_duplicate_id_is_refused(events: PostgresCollection) -> None:
    events.insert_one({"_id": "same", "healthevent": {}})
    with pytest.raises(DuplicateKeyError, match="same"):
        events.insert_one({"_id": "same", "healthevent": {}})


def test_latest_events_of_a_node_newest_first(events: PostgresCollection) -> None:
    for n in (3, 1, 2):
        events.insert_one(event("n1", day(n)))
    events.insert_one(event("n2", day(4)))
    latest = events.find({"healthevent.nodename": "n1"}, sort=[("createdAt", -1)], limit=2)
    assert [e["createdAt"][:10] for e in latest] == ["2026-01-03", "2026-01-02"]


def test_filters_on_camel_case_documents_use_the_extracted_fields(
    events: PostgresCollection,
) -> None:
    events.insert_one({"healthEvent": {"nodeName": "camel", "isFatal": True}})
    assert len(events.find({"healthevent.nodename": "camel"})) == 1
    assert len(events.find({"healthevent.isfatal": True})) == 1


def test_status_filters_and_operators(events: PostgresCollection) -> None:
    a = events.insert_one(event("a", day(1), nodequarantined="Quarantined"))
    b = events.insert_one(event("b", day(2), faultremediated=True))
    c = events.insert_one(event("c", day(3), faultremediated=False))

    def ids(filter: dict[str, Any]) -> set[str]:
        return {d["_id"] for d in events.find(filter)}

    assert ids({"healtheventstatus.nodequarantined": "Quarantined"}) == {a}
    assert ids({"healtheventstatus.nodequarantined": ""}) == {b, c}
    assert ids({"healtheventstatus.faultremediated": {"$ne": True}}) == {a, c}
    assert ids({"healtheventstatus.faultremediated": {"$exists": True}}) == {b, c}
    assert ids({"healtheventstatus.faultremediated": None}) == {a}
    assert ids({"healthevent.nodename": {"$in": ["a", "c"]}}) == {a, c}
    assert ids({"healthevent.nodename": {"$nin": ["a", "c"]}}) == {b}
    assert ids({"createdAt": {"$gt": day(1), "$lte": day(3)}}) == {b, c}
    assert ids({"$or": [{"_id": a}, {"healthevent.nodename": "c"}]}) == {a, c}
    assert ids({"healthevent.agent": "gpu-health-monitor", "_id": {"$ne": b}}) == {a, c}


def test_array_fields_match_an_element(events: PostgresCollection) -> None:
    xid = events.insert_one({"healthevent": {"errorcode": ["79", "48"]}})
    events.insert_one({"healthevent": {"errorcode": ["13"]}})
    assert [d["_id"] for d in events.find({"healthevent.errorcode": "79"})] == [xid]
    assert [d["_id"] for d in events.find({"healthevent.errorcode": ["79", "48"]})] == [xid]


def test_update_one_sets_and_unsets_dotted_paths(events: PostgresCollection) -> None:
    doc_id = events.insert_one(event("n1", day(1)))
    result = events.update_one(
        {"_id": doc_id},
        {
            "$set": {
                "healtheventstatus.nodequarantined": "Quarantined",
                "healtheventstatus.userpodsevictionstatus.status": "InProgress",
            },
            "$unset": {"healthevent.isfatal": ""},
        },
    )
    assert (result.matched_count, result.modified_count) == (1, 1)
    stored = events.find_one({"_id": doc_id})
    assert stored is not None
    assert stored["healtheventstatus"] == {
        "nodequarantined": "Quarantined",
        "userpodsevictionstatus": {"status": "InProgress"},
    }
    assert "isfatal" not in stored["healthevent"]
    assert events.find_one({"healtheventstatus.nodequarantined": "Quarantined"}) == stored


def test_update_without_a_match_changes_nothing(events: PostgresCollection) -> None:
    result = events.update_one({"_id": "missing"}, {"$set": {"a": 1}})
    assert (result.matched_count, result.modified_count) == (0, 0)


def test_delete_one_removes_one_document(events: PostgresCollection) -> None:
    events.insert_one(event("n1", day(1)))
    events.insert_one(event("n1", day(2)))
    assert events.delete_one({"healthevent.nodename": "n1"}) == 1
    assert len(events.find({"healthevent.nodename": "n1"})) == 1
    assert events.delete_one({"healthevent.nodename": "nobody"}) == 0


def test_maintenance_events_are_found_by_their_event_id(store: PostgresStore) -> None:
    maintenance = store.collection("maintenance_events")
    key = maintenance.insert_one({"eventId": "e-1", "csp": "gcp", "status": "DETECTED"})
    assert key == "e-1"
    found = maintenance.find_one({"eventId": "e-1"})
    assert found is not None and found["csp"] == "gcp"


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ({"healthevent.nodename": {"$regex": "^n"}}, r"\$regex"),
        ({"$where": "1"}, r"\$where"),
        ({"healthevent.errorcode.0": "79"}, "array indexes"),
        ({"a": {"$gt": True}}, r"\$gt"),
        ({"a": {"$in": "x"}}, "needs a list"),
    ],
)
def test_unsupported_queries_are_errors_not_ignored(
    events: PostgresCollection, filter: dict[str, Any], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        events.find(filter)


def test_unsupported_updates_are_errors(events: PostgresCollection) -> None:
    doc_id = events.insert_one(event("n1", day(1)))
    with pytest.raises(QueryError, match=r"\$inc"):
        events.update_one({"_id": doc_id}, {"$inc": {"a": 1}})
    with pytest.raises(QueryError, match="immutable"):
        events.update_one({"_id": doc_id}, {"$set": {"_id": "other"}})


def test_unknown_collection_is_refused(store: PostgresStore) -> None:
    with pytest.raises(QueryError, match="unknown collection"):
        store.collection("users")
