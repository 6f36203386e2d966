"""No committed change is skipped however transactions interleave; per document in version order.

Eight writers hold their transactions open for a few milliseconds and commit
in an order unrelated to the order they wrote in; some first insert (getting
their transaction id) and then update a shared document, waiting for its row
lock behind transactions with higher ids. A change stream reads alongside;
so does a naive ``id > last`` poller, which must lose changes under the same
load (otherwise the load would not prove anything).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.providers.postgresql.changestream import PostgresChangeStream
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from nvsentinel_store.store import WatchOptions

pytestmark = pytest.mark.datastore

WRITERS = 8
TRANSACTIONS_PER_WRITER = 60
SHARED_DOCUMENTS = 6
#: A change log row's document key: the document's `_id`, else (a document
#: written without one, as here) the row id. NVSentinel's log keeps whole rows.
DOCUMENT_ID = "coalesce(coalesce(new_values, old_values) -> 'document' ->> '_id', record_id::text)"


def writer(conninfo: str, number: int, shared: list[str], failures: list[BaseException]) -> None:
    rng = random.Random(number)
    try:
        with psycopg.connect(conninfo) as conn:
            for i in range(TRANSACTIONS_PER_WRITER):
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO health_events (document) VALUES (%s)",
                        (Jsonb({"healthevent": {"nodename": f"w{number}-{i}"}}),),
                    )
                    conn.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.004),))
                    if rng.random() < 0.5:
                        # Has a transaction id already; may now wait behind a higher one.
                        conn.execute(
                            "UPDATE health_events SET document = jsonb_set(document, "
                            "'{healtheventstatus}', %s) WHERE id = %s",
                            (
                                Jsonb({"nodequarantined": f"w{number}-{i}"}),
                                rng.choice(shared),
                            ),
                        )
                        conn.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.002),))
    except BaseException as err:  # reported by the test
        failures.append(err)


def naive_poller(conninfo: str, stop: threading.Event, seen: list[tuple[str, int]]) -> None:
    """What the issue warns about: a BIGSERIAL cursor read while writers commit."""
    last = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            done = stop.is_set()
            rows = conn.execute(
                "SELECT id, " + DOCUMENT_ID + ", version FROM datastore_changelog "
                "WHERE table_name = 'health_events' AND id > %s ORDER BY id",
                (last,),
            ).fetchall()
            for row_id, document_id, version in rows:
                seen.append((document_id, version))
                last = row_id
            if done:
                return
            time.sleep(0.001)


def drain(stream: PostgresChangeStream, delivered: list[Any], stop: threading.Event) -> None:
    """Collect the stream's events until ``stop`` is set and nothing came for 0.5 s."""
    idle_since = None
    while True:
        event = stream.try_next(timeout=0.05)
        if event is not None:
            delivered.append(event)
            idle_since = None
        elif stop.is_set():
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.5:
                return


def test_concurrent_writers_every_change_once_in_version_order(
    schema_database: PostgresDatabase, store: PostgresStore
) -> None:
    events = store.collection("health_events")
    shared = [events.insert_one({"healthevent": {"nodename": f"shared-{n}"}}) for n in range(6)]
    stream = events.watch(options=WatchOptions(batch_size=50, poll_interval=0.01))
    delivered: list[dict[str, Any]] = []
    stop = threading.Event()
    naive_seen: list[tuple[str, int]] = []
    failures: list[BaseException] = []

    conninfo = schema_database.conninfo()
    consumer = threading.Thread(target=drain, args=(stream, delivered, stop))
    naive = threading.Thread(target=naive_poller, args=(conninfo, stop, naive_seen))
    writers = [
        threading.Thread(target=writer, args=(conninfo, n, shared, failures))
        for n in range(WRITERS)
    ]
    consumer.start()
    naive.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    stop.set()
    consumer.join(timeout=60)
    naive.join(timeout=60)
    stream.close()
    assert not failures

    with psycopg.connect(conninfo) as conn:
        committed = conn.execute(
            "SELECT " + DOCUMENT_ID + ", version FROM datastore_changelog "
            "WHERE table_name = 'health_events' "
            "AND NOT (" + DOCUMENT_ID + " = ANY(%s) AND version = 1)",
            (shared,),
        ).fetchall()
    expected = Counter((str(d), int(v)) for d, v in committed)
    got = Counter((e["documentKey"]["_id"], e["documentVersion"]) for e in delivered)
    assert sum(expected.values()) > WRITERS * TRANSACTIONS_PER_WRITER
    assert got == expected  # every committed change, exactly once

    versions: dict[str, list[int]] = defaultdict(list)
    for event in delivered:
        versions[event["documentKey"]["_id"]].append(event["documentVersion"])
    out_of_order = {doc: v for doc, v in versions.items() if v != sorted(v)}
    assert out_of_order == {}
    for doc in shared:
        assert versions[doc] == list(range(2, len(versions[doc]) + 2))

    naive_lost = sum((expected - Counter(naive_seen)).values())
    print(f"naive poller lost {naive_lost} of {sum(expected.values())}")
    assert naive_lost > 0, "the load did not make a naive id > last poller lose anything"
