"""How long a change stream waits while a large prune runs, in one transaction and in batches.

A prune is a writing transaction, and a stream delivers a change only once
every transaction that got its id earlier has ended. So while one prune
transaction deletes, every change committed after it started waits. The
measurement fills ``datastore_changelog`` with old changes (written directly,
with triggers off: only their number and size matter here), then, while one
writer inserts events at a steady pace and our stream reads them in a process
of its own, prunes them: once with ``datastore_changelog_prune(max_age)`` (one
transaction), once with ``PostgresStore.prune`` (batches, each its own
transaction, as the prune CronJob and ``nvsentinel-store prune`` run it). The
wait is the commit-to-delivery time of the events committed while the prune
ran; its maximum is what a consumer notices.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from bench import workers
from bench.measure import Plan, Progress, percentile
from bench.processes import Workers
from bench.server import BenchServer
from devsupport.documents import health_event
from devsupport.postgres import MIGRATION_USER
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions

#: Old enough for a 1-hour prune.
OLD = "2 days"
MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class PruneWait:
    mode: str
    deleted: int
    prune_seconds: float
    batches: int
    during: int
    p50_ms: float
    max_ms: float


def fill_old_changes(bs: BenchServer, db: str, count: int, batch: int = 100_000) -> None:
    """``count`` changelog rows of realistic size, two days old, positions in id order."""
    document = health_event("old", random.Random(7))
    with psycopg.connect(bs.server.superuser_conninfo(db), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for low in range(1, count + 1, batch):
            high = min(low + batch - 1, count)
            conn.execute(
                "INSERT INTO datastore_changelog (table_name, record_id, operation, new_values, "
                "changed_at, position_txid, version, replaced) "
                "SELECT 'health_events', md5('old-' || g)::uuid, 'INSERT', "
                "jsonb_build_object('document', "
                "%s::jsonb || jsonb_build_object('_id', 'old-' || g)), "
                f"now() - interval '{OLD}', pg_current_xact_id(), 1, false "
                "FROM generate_series(%s::int, %s::int) AS g",
                (Jsonb(document), low, high),
            )
        conn.execute("VACUUM ANALYZE datastore_changelog")


def _prune_whole(bs: BenchServer, db: str) -> tuple[int, int]:
    with psycopg.connect(bs.conninfo(db, MIGRATION_USER), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT deleted_changes FROM datastore_changelog_prune(make_interval(secs => %s))",
            (MAX_AGE_S,),
        ).fetchall()
    return sum(int(r[0]) for r in rows), 1


def _prune_batched(bs: BenchServer, db: str, batch_size: int) -> tuple[int, int]:
    options = StoreOptions(min_pool_size=1, max_pool_size=1)
    with PostgresStore(bs.conninfo(db, MIGRATION_USER), db, options) as store:
        results = store.prune(MAX_AGE_S, batch_size=batch_size)
    return sum(r.deleted_changes for r in results), sum(r.batches for r in results)


def _stream_during(
    bs: BenchServer, db: str, rate: float, prune: Callable[[], tuple[int, int]]
) -> tuple[list[tuple[int, int]], dict[str, int], float, float, tuple[int, int]]:
    """Write at ``rate`` and read with our stream while ``prune`` runs in a thread."""
    conninfo = bs.conninfo(db)
    with Workers() as group:
        group.start(
            "change-stream",
            workers.stream_consumer,
            conninfo,
            db,
            1.0,
            group.ready,
            group.go,
            group.stop,
            group.results,
        )
        group.wait_ready(1)
        group.go.set()
        outcome: list[tuple[int, int]] = []
        window: list[float] = []

        def run_prune() -> None:
            window.append(time.monotonic_ns() / 1e9)
            outcome.append(prune())
            window.append(time.monotonic_ns() / 1e9)

        commits: dict[str, int] = {}
        rng = random.Random(11)
        pruner = threading.Thread(target=run_prune)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            t0 = time.monotonic()
            i = 0
            while True:
                if i == round(rate):  # one second of steady writes first
                    pruner.start()
                if i > rate and not pruner.is_alive() and time.monotonic() - window[-1] > 1.0:
                    break
                pause = t0 + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                row = conn.execute(
                    "INSERT INTO health_events (document) VALUES (%s) RETURNING id::text",
                    (Jsonb(health_event(f"during-{i}", rng)),),
                    prepare=True,
                ).fetchone()
                assert row is not None
                commits[str(row[0])] = time.monotonic_ns()
                i += 1
        pruner.join()
        group.stop.set()
        (answer,) = group.collect(1, timeout=120)
    seen = [(int(a), int(b)) for a, b in answer[1]["seen"]]
    return seen, commits, window[0], window[1], outcome[0]


def _measure_one(
    bs: BenchServer,
    mode: str,
    slug: str,
    plan: Plan,
    log: Progress,
    prune: Callable[[str], tuple[int, int]],
) -> PruneWait:
    db = bs.create_database(f"bench_prune_{slug}")
    log(f"prune ({mode}): filling the changelog with {plan.prune_changes:,} old changes")
    fill_old_changes(bs, db, plan.prune_changes)
    bs.checkpoint()
    log(f"prune ({mode}): pruning while one writer inserts {plan.prune_rate:g} events/s")
    seen, commits, start, end, (deleted, batches) = _stream_during(
        bs, db, plan.prune_rate, lambda: prune(db)
    )
    with psycopg.connect(bs.conninfo(db), autocommit=True) as conn:
        records = dict(
            (int(r[0]), str(r[1]))
            for r in conn.execute(
                "SELECT id, record_id::text FROM datastore_changelog WHERE operation = 'INSERT'"
            ).fetchall()
        )
    delivered = {cid: at for cid, at in seen}
    during = [
        (delivered[cid] - commits[record]) / 1e6
        for cid, record in records.items()
        if record in commits and cid in delivered and start <= commits[record] / 1e9 <= end
    ]
    bs.server.drop_database(db)
    result = PruneWait(
        mode=mode,
        deleted=deleted,
        prune_seconds=end - start,
        batches=batches,
        during=len(during),
        p50_ms=percentile(during, 50),
        max_ms=max(during) if during else float("nan"),
    )
    log(
        f"prune ({mode}): {deleted:,} changes in {result.prune_seconds:.2f} s "
        f"({batches:,} transaction(s)); {len(during):,} events committed meanwhile waited "
        f"p50 {result.p50_ms:.1f} ms, at most {result.max_ms:.1f} ms"
    )
    return result


def measure_prune(bs: BenchServer, plan: Plan, log: Progress) -> list[PruneWait]:
    return [
        _measure_one(bs, "one transaction", "whole", plan, log, lambda db: _prune_whole(bs, db)),
        _measure_one(
            bs,
            f"batches of {plan.prune_batch:,}",
            "batched",
            plan,
            log,
            lambda db: _prune_batched(bs, db, plan.prune_batch),
        ),
    ]
