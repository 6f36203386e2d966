"""Change streams: event shape, start positions, resume, retention, server restarts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.errors import HistoryLostError, QueryError
from nvsentinel_store.providers.postgresql import health
from nvsentinel_store.providers.postgresql.changestream import PostgresChangeStream
from nvsentinel_store.providers.postgresql.provider import (
    PostgresCollection,
    PostgresStore,
    StoreOptions,
)
from nvsentinel_store.store import ChangeEvent, WatchOptions
from tests.datastore.test_prune_limits import backdate, pruner_store

pytestmark = pytest.mark.datastore

FAST = WatchOptions(poll_interval=0.02)


def take(stream: PostgresChangeStream, count: int, timeout: float = 10.0) -> list[ChangeEvent]:
    """Exactly ``count`` events (fails if they do not arrive within ``timeout``)."""
    events: list[ChangeEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(events)} of {count} events arrived"
        event = stream.try_next(timeout=remaining)
        if event is not None:
            events.append(event)
    return events


def nothing_more(stream: PostgresChangeStream, wait: float = 0.3) -> bool:
    return stream.try_next(timeout=wait) is None


def node_event(node: str, **extra: Any) -> dict[str, Any]:
    return {"healthevent": {"nodename": node, "isfatal": False}, **extra}


@pytest.fixture
def events(store: PostgresStore) -> PostgresCollection:
    return store.collection("health_events")


def test_events_have_mongodb_shape(
    events: PostgresCollection, schema_database: PostgresDatabase
) -> None:
    stream = events.watch(options=FAST)
    doc_id = events.insert_one(node_event("n1", healtheventstatus={"nodequarantined": ""}))
    events.update_one(
        {"_id": doc_id},
        {
            "$set": {"healtheventstatus.nodequarantined": "Quarantined"},
            "$unset": {"healthevent.isfatal": ""},
        },
    )
    events.delete_one({"_id": doc_id})
    insert, update, delete = take(stream, 3)

    assert insert["operationType"] == "insert"
    assert insert["ns"] == {"db": schema_database.name, "coll": "health_events"}
    assert insert["documentKey"] == {"_id": doc_id}
    assert insert["fullDocument"]["_id"] == doc_id
    assert insert["fullDocument"]["healthevent"] == {"nodename": "n1", "isfatal": False}
    assert isinstance(insert["clusterTime"], datetime)
    assert set(insert["_id"]) == {"_data"}

    assert update["operationType"] == "update"
    assert update["updateDescription"] == {
        "updatedFields": {"healtheventstatus.nodequarantined": "Quarantined"},
        "removedFields": ["healthevent.isfatal"],
        "truncatedArrays": [],
    }
    assert update["fullDocument"]["healtheventstatus"]["nodequarantined"] == "Quarantined"
    assert update["fullDocumentBeforeChange"]["healtheventstatus"]["nodequarantined"] == ""
    assert (insert["documentVersion"], update["documentVersion"]) == (1, 2)

    assert delete["operationType"] == "delete"
    assert delete["documentKey"] == {"_id": doc_id}
    assert "fullDocument" not in delete
    assert insert["_id"]["_data"] < update["_id"]["_data"] < delete["_id"]["_data"]


def test_update_that_changes_nothing_produces_no_event(events: PostgresCollection) -> None:
    doc_id = events.insert_one(node_event("n1"))
    stream = events.watch(options=FAST)
    result = events.update_one({"_id": doc_id}, {"$set": {"healthevent.nodename": "n1"}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    assert nothing_more(stream)


def test_start_from_now_skips_earlier_changes(events: PostgresCollection) -> None:
    events.insert_one(node_event("before"))
    stream = events.watch(options=FAST)
    events.insert_one(node_event("after"))
    (event,) = take(stream, 1)
    assert event["fullDocument"]["healthevent"]["nodename"] == "after"
    assert nothing_more(stream)


def test_from_beginning_starts_at_the_oldest_retained_change(events: PostgresCollection) -> None:
    for node in ("a", "b", "c"):
        events.insert_one(node_event(node))
    stream = events.watch(from_beginning=True, options=FAST)
    nodes = [e["fullDocument"]["healthevent"]["nodename"] for e in take(stream, 3)]
    assert nodes == ["a", "b", "c"]


def test_resume_after_a_token_continues_with_the_next_change(events: PostgresCollection) -> None:
    stream = events.watch(options=FAST)
    for n in range(5):
        events.insert_one(node_event(f"n{n}"))
    first_two = take(stream, 2)
    stream.close()
    resumed = events.watch(resume_after=first_two[-1]["_id"], options=FAST)
    rest = take(resumed, 3)
    assert [e["fullDocument"]["healthevent"]["nodename"] for e in rest] == ["n2", "n3", "n4"]
    assert nothing_more(resumed)


def test_consumer_resumes_from_its_stored_token(events: PostgresCollection) -> None:
    stream = events.watch(client_name="node-drainer", options=FAST)
    for n in range(4):
        events.insert_one(node_event(f"n{n}"))
    take(stream, 1)
    stream.save_token()
    stream.close()
    # Another consumer's token does not move this one.
    other = events.watch(client_name="fault-remediation", from_beginning=True, options=FAST)
    take(other, 4)
    other.save_token()
    resumed = events.watch(client_name="node-drainer", options=FAST)
    nodes = [e["fullDocument"]["healthevent"]["nodename"] for e in take(resumed, 3)]
    assert nodes == ["n1", "n2", "n3"]


def test_a_foreign_token_is_refused(events: PostgresCollection) -> None:
    with pytest.raises(QueryError, match="resume token"):
        events.watch(resume_after={"_data": "826656A1F2000000012B"})


def test_pruning_past_a_silent_consumer_loses_its_history(
    schema_database: PostgresDatabase, store: PostgresStore, events: PostgresCollection
) -> None:
    silent = events.watch(client_name="silent", options=FAST)
    silent.save_token()
    silent.close()
    live = events.watch(client_name="live", options=FAST)
    for n in range(10):
        events.insert_one(node_event(f"n{n}"))
    take(live, 10)
    backdate(schema_database, consumers="silent,live")  # two hours pass
    live.save_token()  # the live consumer stored its position within the max age

    with pruner_store(schema_database) as pruner:
        results = {r.collection: r for r in pruner.prune(3600)}
    assert results["health_events"].deleted_changes == 10
    assert results["health_events"].expired_consumers == 1

    with pytest.raises(HistoryLostError) as lost:
        events.watch(client_name="silent")
    assert lost.value.code == 286
    assert "silent" in str(lost.value)
    resumed_live = events.watch(client_name="live", options=FAST)
    assert nothing_more(resumed_live)


def test_pruning_keeps_what_a_live_consumer_has_not_read(
    schema_database: PostgresDatabase, store: PostgresStore, events: PostgresCollection
) -> None:
    lagging = events.watch(client_name="lagging", options=FAST)
    for n in range(10):
        events.insert_one(node_event(f"n{n}"))
    take(lagging, 3)
    backdate(schema_database, consumers="lagging")  # two hours pass
    lagging.save_token()
    lagging.close()

    with pruner_store(schema_database) as pruner:
        results = {r.collection: r for r in pruner.prune(3600)}
    assert results["health_events"].deleted_changes == 3
    resumed = events.watch(client_name="lagging", options=FAST)
    nodes = [e["fullDocument"]["healthevent"]["nodename"] for e in take(resumed, 7)]
    assert nodes == [f"n{n}" for n in range(3, 10)]


def test_stream_without_a_consumer_name_reports_history_lost_mid_stream(
    schema_database: PostgresDatabase, store: PostgresStore, events: PostgresCollection
) -> None:
    stream = events.watch(from_beginning=True, options=FAST)
    for n in range(5):
        events.insert_one(node_event(f"n{n}"))
    take(stream, 2)  # reads the whole batch, returns two
    for n in range(5, 8):
        events.insert_one(node_event(f"n{n}"))
    backdate(schema_database)  # every change older than the max age
    with pruner_store(schema_database) as pruner:
        pruner.prune(3600)
    with pytest.raises(HistoryLostError):
        take(stream, 6)


def test_watch_survives_a_server_restart(
    schema_database: PostgresDatabase, store: PostgresStore, events: PostgresCollection
) -> None:
    stream = events.watch(client_name="restart", options=FAST)
    before = [events.insert_one(node_event(f"before-{n}")) for n in range(20)]
    got = take(stream, 10)
    schema_database.server.restart()
    after = [events.insert_one(node_event(f"after-{n}")) for n in range(20)]
    got += take(stream, 30, timeout=60)
    assert [e["documentKey"]["_id"] for e in got] == before + after
    assert nothing_more(stream)
    assert stream.reconnects >= 1


def test_unknown_pipeline_stage_or_operator_is_refused(events: PostgresCollection) -> None:
    with pytest.raises(QueryError, match=r"\$project"):
        events.watch([{"$project": {"fullDocument": 1}}])
    with pytest.raises(QueryError, match=r"\$regex"):
        events.watch([{"$match": {"fullDocument.healthevent.nodename": {"$regex": "^n"}}}])
    with pytest.raises(QueryError, match=r"\$where"):
        events.watch([{"$match": {"$where": "true"}}])


def test_open_transaction_delays_later_commits_but_loses_nothing(
    schema_database: PostgresDatabase, events: PostgresCollection
) -> None:
    stream = events.watch(options=FAST)
    with psycopg.connect(schema_database.conninfo()) as slow:
        slow.execute(
            'INSERT INTO health_events (document) VALUES (\'{"_id": "slow"}\')'
        )  # holds its transaction id open
        events.insert_one({"_id": "fast"})
        assert nothing_more(stream)  # committed, but behind the open transaction
        with psycopg.connect(schema_database.conninfo(), autocommit=True) as other:
            report = health.check(other, "verify-full")
        delivery = {c.name: c for c in report.checks}["delivery"]
        assert delivery.ok and delivery.detail.startswith("1 committed change(s) wait")
        slow.commit()
    got = take(stream, 2)
    assert {e["documentKey"]["_id"] for e in got} == {"slow", "fast"}


def test_writes_notify_nvsentinel_changes_unless_an_operator_turns_it_off(
    schema_database: PostgresDatabase, events: PostgresCollection
) -> None:
    """NVSentinel's watchers LISTEN on nvsentinel_changes; our streams never need it."""
    stream = events.watch(options=FAST)
    with psycopg.connect(schema_database.conninfo(), autocommit=True) as listener:
        listener.execute("LISTEN nvsentinel_changes")
        events.insert_one({"_id": "notified"})
        (note,) = list(listener.notifies(timeout=5, stop_after=1))
        payload = json.loads(note.payload)
        change_id = listener.execute(
            "SELECT id FROM datastore_changelog WHERE record_id = nvsentinel_document_uuid(%s)",
            (Jsonb("notified"),),
        ).fetchone()
        assert change_id is not None
        assert payload == {"id": change_id[0], "table": "health_events", "operation": "INSERT"}

        with psycopg.connect(schema_database.superuser_conninfo(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET nvsentinel.notify_changes = off").format(
                    sql.Identifier(schema_database.name)
                )
            )
        with PostgresStore(
            schema_database.conninfo(), schema_database.name, StoreOptions(max_pool_size=2)
        ) as quiet:
            quiet.collection("health_events").insert_one({"_id": "silent"})
        assert list(listener.notifies(timeout=1)) == []
    # Off only silences the hint: the change is still delivered, once each.
    assert [e["documentKey"]["_id"] for e in take(stream, 2)] == ["notified", "silent"]
    assert nothing_more(stream)


def test_streams_see_only_their_collection(store: PostgresStore) -> None:
    health_stream = store.collection("health_events").watch(options=FAST)
    maintenance = store.collection("maintenance_events")
    maintenance_stream = maintenance.watch(options=FAST)
    maintenance.insert_one({"eventId": "m-1", "status": "DETECTED"})
    maintenance.update_one({"eventId": "m-1"}, {"$set": {"status": "QUARANTINE_TRIGGERED"}})
    store.collection("health_events").insert_one(node_event("n1"))
    insert, update = take(maintenance_stream, 2)
    assert (insert["ns"]["coll"], insert["documentKey"]) == ("maintenance_events", {"_id": "m-1"})
    assert update["updateDescription"]["updatedFields"] == {"status": "QUARANTINE_TRIGGERED"}
    assert nothing_more(maintenance_stream)
    (health,) = take(health_stream, 1)
    assert health["ns"]["coll"] == "health_events"
    assert nothing_more(health_stream)


#: Without a wake-up this stream polls when it starts waiting and then once a minute.
SLEEPY = WatchOptions(poll_interval=60.0, min_poll_interval=60.0)
#: How long the tests below wait in ``try_next``; a stream not woken returns only then.
WAIT = 20.0


def write_while_waiting(
    write: Callable[[], object], stream: PostgresChangeStream, wait: float = WAIT
) -> tuple[ChangeEvent | None, float]:
    """``write`` from another thread half a second into ``try_next(wait)``.

    Returns the event and how long ``try_next`` took: a stream that was not
    woken returns after ``wait`` (with what its last poll read then).
    """
    timer = threading.Timer(0.5, write)
    started = time.monotonic()
    timer.start()
    try:
        return stream.try_next(timeout=wait), time.monotonic() - started
    finally:
        timer.join()


def insert_elsewhere(database: PostgresDatabase, doc_id: str) -> Callable[[], None]:
    """An insert on a connection of its own (another process, as far as the stream knows)."""

    def insert() -> None:
        with psycopg.connect(database.conninfo(), autocommit=True) as writer:
            writer.execute(
                "INSERT INTO health_events (document) VALUES (%s)", (Jsonb({"_id": doc_id}),)
            )

    return insert


def silence_notifications(database: PostgresDatabase) -> None:
    with psycopg.connect(database.superuser_conninfo(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET nvsentinel.notify_changes = off").format(
                sql.Identifier(database.name)
            )
        )


def test_an_idle_stream_is_woken_by_the_notification_of_a_commit_elsewhere(
    schema_database: PostgresDatabase, events: PostgresCollection
) -> None:
    """NVSentinel's notification ends the wait: no poll is due for a minute."""
    stream = events.watch(options=SLEEPY)
    event, seconds = write_while_waiting(insert_elsewhere(schema_database, "woken"), stream)
    assert event is not None
    assert event["documentKey"]["_id"] == "woken"
    assert seconds < WAIT / 2, f"the stream slept {seconds:.1f} s through the notification"


def test_without_notifications_a_change_waits_for_the_next_poll_and_is_not_lost(
    schema_database: PostgresDatabase, events: PostgresCollection
) -> None:
    """Notifications off: nothing wakes the stream; its next poll still delivers the change."""
    silence_notifications(schema_database)
    stream = events.watch(options=SLEEPY)
    event, seconds = write_while_waiting(insert_elsewhere(schema_database, "unheard"), stream, 3.0)
    assert seconds >= 3.0, "something woke the stream although nothing was notified"
    assert event is not None
    assert event["documentKey"]["_id"] == "unheard"


def test_a_write_through_the_same_store_wakes_its_streams_without_notifications(
    schema_database: PostgresDatabase,
) -> None:
    silence_notifications(schema_database)
    with PostgresStore(
        schema_database.conninfo(), schema_database.name, StoreOptions(max_pool_size=2)
    ) as quiet:
        collection = quiet.collection("health_events")
        stream = collection.watch(options=SLEEPY)
        event, seconds = write_while_waiting(lambda: collection.insert_one({"_id": "own"}), stream)
        assert event is not None
        assert event["documentKey"]["_id"] == "own"
        assert seconds < WAIT / 2, (
            f"the store's own write woke its stream only after {seconds:.1f} s"
        )


def test_closing_a_waiting_stream_ends_its_wait(events: PostgresCollection) -> None:
    stream = events.watch(options=SLEEPY)
    timer = threading.Timer(0.5, stream.close)
    started = time.monotonic()
    timer.start()
    assert stream.try_next(timeout=WAIT) is None
    timer.join()
    assert time.monotonic() - started < WAIT / 2, "close() did not end the stream's wait"
