"""Functions that run in their own processes (``spawn``): writers, pollers, consumers.

Each one connects, reports ready on ``ready``, waits for ``go``, works, and puts
its result on ``results`` as ``(name, payload)``. Separate processes keep the
writers and readers from sharing one interpreter lock, so the numbers are the
database's and not Python's (on 2 cores they still share the CPUs with the
server, as services on one node would).
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from devsupport.documents import QUARANTINE_STATES, health_event
from nvsentinel_store.providers.postgresql.positions import Position
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions


class Queue(Protocol):
    def put(self, obj: Any) -> None: ...


class Event(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...

    def is_set(self) -> bool: ...


#: How long a worker waits for ``go`` before giving up (the parent died or failed).
GO_TIMEOUT = 120.0


def _ignore_sigint() -> None:
    """Ctrl-C is handled by the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_go(go: Event) -> None:
    if not go.wait(GO_TIMEOUT):
        raise TimeoutError("no start signal from the benchmark process")


def paced_writer(
    conninfo: str,
    tag: str,
    number: int,
    writers: int,
    rate: float,
    count: int,
    hold_ms: tuple[float, float],
    update_share: float,
    shared_ids: int,
    ready: Queue,
    go: Event,
    results: Queue,
) -> None:
    """``count`` transactions at ``rate / writers`` per second, each held open ``hold_ms``.

    Writer ``number`` starts its i-th transaction at
    ``t0 + (i * writers + number) / rate`` (open loop: a late one starts at
    once, never skipped). Each inserts one event (``_id`` ``<tag>-<number>-<i>``),
    holds the transaction open for a uniform ``hold_ms`` while the other
    writers commit, and with probability ``update_share`` then sets the
    quarantine status of one of ``shared_ids`` pre-filled events (``pre-1``
    ...), possibly waiting for that row's lock behind a transaction with a
    higher id. So commits come out of id order, as the services' do.

    Reports, per transaction, the inserted row's id and the monotonic clock
    when ``COMMIT`` returned. Plain psycopg, so that the writers keep up with
    the pace on 2 cores.
    """
    _ignore_sigint()
    rng = random.Random(number)
    insert = "INSERT INTO health_events (document) VALUES (%s) RETURNING id::text"
    update = (
        "UPDATE health_events SET document = jsonb_set(document, "
        "'{healtheventstatus,nodequarantined}', %s) "
        "WHERE id = nvsentinel_document_uuid(to_jsonb(%s::text))"
    )
    with psycopg.connect(conninfo) as conn:
        conn.execute(insert, (Jsonb(health_event(f"warmup-{tag}-{number}", rng)),))
        conn.commit()
        ready.put(("ready", number))
        _wait_go(go)
        t0 = time.monotonic()
        commits: list[tuple[str, int]] = []
        late = 0
        for i in range(count):
            document = Jsonb(health_event(f"{tag}-{number}-{i}", rng))
            pause = t0 + (i * writers + number) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif pause < -0.001:
                late += 1
            row = conn.execute(insert, (document,), prepare=True).fetchone()
            assert row is not None
            time.sleep(rng.uniform(*hold_ms) / 1000)
            if rng.random() < update_share:
                state = Jsonb(rng.choice(QUARANTINE_STATES))
                conn.execute(update, (state, f"pre-{rng.randint(1, shared_ids)}"), prepare=True)
            conn.commit()
            commits.append((str(row[0]), time.monotonic_ns()))
    results.put(("writer", {"commits": commits, "late": late, "start": t0}))


def naive_poller(
    conninfo: str, start_id: int, ready: Queue, go: Event, stop: Event, results: Queue
) -> None:
    """The cursor the issue warns about: ``id > last`` on the BIGSERIAL changelog id.

    Polls as fast as a service would want (1 ms pause when a poll is empty);
    after ``stop`` it polls once more and reports the changelog ids it saw,
    each with the monotonic clock when its poll returned.
    """
    _ignore_sigint()
    last = start_id
    seen: list[tuple[int, int]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT 1")
        ready.put(("ready", "naive"))
        _wait_go(go)
        while True:
            done = stop.is_set()
            rows = conn.execute(
                "SELECT id FROM datastore_changelog "
                "WHERE table_name = 'health_events' AND id > %s ORDER BY id LIMIT 1000",
                (last,),
            ).fetchall()
            now = time.monotonic_ns()
            for (row_id,) in rows:
                seen.append((int(row_id), now))
                last = int(row_id)
            if done and not rows:
                break
            if not rows:
                time.sleep(0.001)
    results.put(("naive", {"seen": seen}))


def stream_consumer(
    conninfo: str,
    dbname: str,
    idle_after_stop: float,
    ready: Queue,
    go: Event,
    stop: Event,
    results: Queue,
) -> None:
    """The project's change stream (``watch``, default options) opened at "now".

    Reads until ``stop`` is set and then nothing more arrives for
    ``idle_after_stop`` seconds; reports the changelog id of each event with
    the monotonic clock when ``try_next`` returned it, and how many arrived out
    of per-document version order.
    """
    _ignore_sigint()
    store = PostgresStore(conninfo, dbname, StoreOptions(min_pool_size=1, max_pool_size=1))
    try:
        stream = store.collection("health_events").watch()
        ready.put(("ready", "stream"))
        _wait_go(go)
        seen: list[tuple[int, int]] = []
        versions: dict[str, int] = {}
        out_of_order = 0
        idle_since: float | None = None
        while True:
            event = stream.try_next(timeout=0.1)
            if event is not None:
                idle_since = None
                now = time.monotonic_ns()
                seen.append((Position.from_token(event["_id"]).change_id, now))
                key = str(event["documentKey"]["_id"])
                version = int(event["documentVersion"])
                if version <= versions.get(key, 0):
                    out_of_order += 1
                versions[key] = version
                continue
            if stop.is_set():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= idle_after_stop:
                    break
        stream.close()
        results.put(("stream", {"seen": seen, "out_of_order": out_of_order}))
    finally:
        store.close()
