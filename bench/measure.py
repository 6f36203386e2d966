"""The four measurements: write throughput, drain rate, delivery latency, lost changes."""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench import workers
from bench.documents import sql_document
from bench.processes import Workers
from bench.server import BenchServer
from bench.writes import pgbench, prefill, prefill_events, prefilled_id, scripts
from nvsentinel_store.providers.postgresql import PostgresStore
from nvsentinel_store.store import Pipeline, WatchOptions


@dataclass(frozen=True)
class Plan:
    """How long and how much each measurement runs."""

    write_seconds: int
    write_rounds: int
    write_prefill: int
    #: (workload, fsync on, clients) per cell, in the order run.
    write_cells: tuple[tuple[str, bool, int], ...]
    drain_changes: int
    latency_rates: tuple[float, ...]
    latency_seconds: float
    latency_writers: int
    latency_fast_poll: float | None
    loss_seconds: float
    loss_writers: int
    loss_hold_ms: tuple[float, float]


FULL = Plan(
    write_seconds=4,
    write_rounds=3,
    write_prefill=20_000,
    write_cells=(
        ("insert", True, 1),
        ("insert", True, 8),
        ("mix", True, 1),
        ("mix", True, 8),
        ("insert", False, 8),
    ),
    drain_changes=100_000,
    latency_rates=(10.0, 100.0, 1000.0),
    latency_seconds=10.0,
    latency_writers=8,
    latency_fast_poll=0.005,
    loss_seconds=10.0,
    loss_writers=8,
    loss_hold_ms=(1.0, 5.0),
)
QUICK = Plan(
    write_seconds=1,
    write_rounds=1,
    write_prefill=2_000,
    write_cells=(("insert", True, 1), ("insert", True, 8), ("mix", True, 8)),
    drain_changes=10_000,
    latency_rates=(10.0, 100.0, 1000.0),
    latency_seconds=2.0,
    latency_writers=8,
    latency_fast_poll=None,
    loss_seconds=3.0,
    loss_writers=8,
    loss_hold_ms=(1.0, 5.0),
)


class Progress:
    """Progress lines on stderr, with the time since the start."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0


# -- 1. write throughput ------------------------------------------------------------


#: The databases of the write benchmark, all on the same server: NVSentinel's
#: own schema (its migration files; no extraction, its trigger always
#: notifies); ours (our migrations: NVSentinel's schema, extraction, change
#: positions), notifications on as by default; ours with
#: ``nvsentinel.notify_changes = off`` for the database.
WRITE_DATABASES = ("nvsentinel", "ours", "ours-quiet")


@dataclass
class WriteCell:
    workload: str
    durable: bool
    clients: int
    #: Transactions/s of every round, per database of :data:`WRITE_DATABASES`.
    tps: dict[str, list[float]] = field(default_factory=lambda: {db: [] for db in WRITE_DATABASES})
    failed: int = 0
    #: Cores other work used meanwhile (see bench.cpu).
    other_cpu: float = math.nan

    def median(self, database: str) -> float:
        values = self.tps[database]
        return statistics.median(values) if values else math.nan

    def ratio(self, database: str, baseline: str) -> float:
        """Median of ``database`` over median of ``baseline``."""
        return self.median(database) / self.median(baseline)

    def round_ratios(self, database: str, baseline: str) -> list[float]:
        """``database`` over ``baseline`` in each round (a round's runs are back to back)."""
        return [a / b for a, b in zip(self.tps[database], self.tps[baseline], strict=True)]

    @property
    def ours_vs_nvsentinel(self) -> float:
        """Throughput kept on top of NVSentinel's schema: ours over NVSentinel's."""
        return self.ratio("ours", "nvsentinel")

    @property
    def quiet_vs_notifying(self) -> float:
        """Ours with notifications off over ours with them on."""
        return self.ratio("ours-quiet", "ours")


def _check_write_database(bs: BenchServer, database: str, db: str) -> None:
    """Fail unless ``db`` is what the report says: extraction present or not, notifications.

    Checked through the services' role: our extraction trigger on
    ``health_events`` (ours only), and whether an update of a pre-filled event
    sends a notification on ``nvsentinel_changes`` (all but ``ours-quiet``).
    """
    with psycopg.connect(bs.conninfo(db), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'health_events'::regclass "
            "AND tgname = 'health_events_extract'"
        ).fetchone()
        extraction = bool(row and row[0])
        conn.execute("LISTEN nvsentinel_changes")
        conn.execute(f"UPDATE health_events SET updated_at = now() WHERE id = {prefilled_id('1')}")
        notified = any(True for _ in conn.notifies(timeout=1.0, stop_after=1))
    expected = (database != "nvsentinel", database != "ours-quiet")
    if (extraction, notified) != expected:
        raise RuntimeError(
            f"write database {database} ({db}): extraction trigger {extraction}, "
            f"notification {notified}; expected {expected[0]} and {expected[1]}"
        )


def measure_writes(bs: BenchServer, plan: Plan, log: Progress) -> list[WriteCell]:
    """pgbench on NVSentinel's schema, ours and ours without notifications; interleaved."""
    log("write throughput: preparing NVSentinel's schema, ours, and ours with notifications off")
    dbs = {
        "nvsentinel": bs.create_nvsentinel_database("bench_writes_nvsentinel"),
        "ours": bs.create_database("bench_writes_ours"),
        "ours-quiet": bs.create_database("bench_writes_ours_quiet"),
    }
    bs.set_notify_changes(dbs["ours-quiet"], False)
    for database, db in dbs.items():
        prefill_events(bs.conninfo(db), plan.write_prefill)
        _check_write_database(bs, database, db)
        bs.analyze(db)
    cells: list[WriteCell] = []
    with tempfile.TemporaryDirectory(prefix="nvsentinel-bench-") as tmp:
        files = scripts(Path(tmp), plan.write_prefill)
        for workload, durable, clients in plan.write_cells:
            if bs.fsync() != ("on" if durable else "off"):
                bs.set_durable(durable)
            cell = WriteCell(workload, durable, clients)
            cells.append(cell)
            meter = bs.cpu_meter()
            for rnd in range(plan.write_rounds):
                # Rotate which database goes first, so drift in the machine's
                # load does not favour one of them.
                shift = (rnd + len(cells)) % len(WRITE_DATABASES)
                order = WRITE_DATABASES[shift:] + WRITE_DATABASES[:shift]
                for database in order:
                    bs.checkpoint()
                    result = pgbench(
                        bs, dbs[database], files[workload], clients, plan.write_seconds
                    )
                    cell.tps[database].append(result.tps)
                    cell.failed += result.failed
                    log(
                        f"write {workload:6} fsync={'on' if durable else 'off':3} "
                        f"clients={clients} {database:10} "
                        f"round {rnd + 1}: {result.tps:8.0f} tx/s "
                        f"(avg latency {result.latency_ms:.2f} ms)"
                    )
            cell.other_cpu = meter.others_cores()
            log(
                f"  -> ours keeps {cell.ours_vs_nvsentinel:.1%} of NVSentinel's; "
                f"notifications off vs on {cell.quiet_vs_notifying:.1%} (medians); "
                f"other work used {cell.other_cpu:.2f} cores"
            )
    bs.set_durable(True)
    for db in dbs.values():
        bs.server.drop_database(db)
    return cells


# -- 2. drain rate --------------------------------------------------------------------


@dataclass(frozen=True)
class DrainResult:
    label: str
    changes: int
    delivered: int
    seconds: float
    other_cpu: float

    @property
    def rate(self) -> float:
        return self.changes / self.seconds


def _fill_lifecycle(conninfo: str, events: int, batch: int = 1000) -> int:
    """``events`` inserts, then three status updates of each (quarantine, eviction, remediation).

    Each statement handles ``batch`` documents in one transaction; returns the
    number of changes made.
    """
    updates = (
        "jsonb_set(document, '{healtheventstatus,nodequarantined}', '\"Quarantined\"')",
        "jsonb_set(document, '{healtheventstatus,userpodsevictionstatus}', "
        '\'{"status": "Succeeded", "message": ""}\')',
        "jsonb_set(jsonb_set(document, '{healtheventstatus,faultremediated}', 'true'), "
        "'{healtheventstatus,lastremediationtimestamp}', to_jsonb(now()))",
    )
    changes = 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for low in range(1, events + 1, batch):
            high = min(low + batch - 1, events)
            conn.execute(
                "INSERT INTO health_events (document) SELECT "
                + sql_document("'d-' || g", "g % 2000", "g % 8")
                + f" FROM generate_series({low:d}, {high:d}) AS g"
            )
            changes += high - low + 1
        for expression in updates:
            for low in range(1, events + 1, batch):
                high = min(low + batch - 1, events)
                cur = conn.execute(
                    f"UPDATE health_events SET document = {expression} "
                    "WHERE id IN (SELECT nvsentinel_document_uuid(to_jsonb('d-' || g)) "
                    "FROM generate_series(%s::int, %s::int) AS g)",
                    (low, high),
                )
                changes += cur.rowcount
    return changes


def _drain(
    bs: BenchServer,
    db: str,
    label: str,
    changes: int,
    expected: int,
    log: Progress,
    pipeline: Pipeline | None = None,
) -> DrainResult:
    meter = bs.cpu_meter()
    with PostgresStore(bs.conninfo(db), db) as store:
        started = time.monotonic()
        stream = store.collection("health_events").watch(pipeline, from_beginning=True)
        delivered = 0
        step = max(1, expected // 4)
        while delivered < expected:
            if stream.try_next(timeout=10.0) is None:
                break
            delivered += 1
            if delivered % step == 0:
                log(f"  {label}: {delivered:,} of {expected:,}")
        seconds = time.monotonic() - started
        stream.close()
    result = DrainResult(label, changes, delivered, seconds, meter.others_cores())
    log(f"drain {label}: {changes:,} changes in {seconds:.2f} s = {result.rate:,.0f}/s")
    if delivered != expected:
        log(f"  WARNING: {delivered:,} events delivered, {expected:,} expected")
    return result


def measure_drain(bs: BenchServer, plan: Plan, log: Progress) -> list[DrainResult]:
    """One consumer reads a pre-filled changelog from the beginning (``from_beginning``)."""
    n = plan.drain_changes
    log(f"drain: filling a changelog with {n:,} inserts")
    inserts_db = bs.create_database("bench_drain_inserts")
    prefill(bs.conninfo(inserts_db), n)
    bs.analyze(inserts_db)
    log(f"drain: filling a changelog with {n:,} lifecycle changes (1 insert : 3 updates)")
    mix_db = bs.create_database("bench_drain_lifecycle")
    mix_changes = _fill_lifecycle(bs.conninfo(mix_db), n // 4)
    bs.analyze(mix_db)
    results = [
        _drain(bs, inserts_db, "inserts", n, n, log),
        _drain(bs, mix_db, "lifecycle", mix_changes, mix_changes, log),
        _drain(
            bs,
            mix_db,
            "lifecycle, filtered",
            mix_changes,
            n // 4,
            log,
            [
                {
                    "$match": {
                        "operationType": "update",
                        "updateDescription.updatedFields.healtheventstatus.nodequarantined": {
                            "$exists": True
                        },
                    }
                }
            ],
        ),
    ]
    bs.server.drop_database(inserts_db)
    bs.server.drop_database(mix_db)
    return results


# -- 3. commit-to-delivery latency -----------------------------------------------------


@dataclass(frozen=True)
class LatencyResult:
    options: str
    offered: float
    achieved: float
    writers: int
    sent: int
    delivered: int
    late_sends: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    other_cpu: float


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


_RUNS = itertools.count(1)


def _latency_at(
    bs: BenchServer,
    db: str,
    store: PostgresStore,
    rate: float,
    plan: Plan,
    log: Progress,
    options: WatchOptions | None = None,
) -> LatencyResult:
    writers_n = plan.latency_writers
    per_writer = max(1, round(rate * plan.latency_seconds / writers_n))
    expected = per_writer * writers_n
    conninfo = bs.conninfo(db)
    tag = f"lat{next(_RUNS)}"
    delivered: dict[str, int] = {}
    meter = bs.cpu_meter()
    with Workers() as group:
        stream = store.collection("health_events").watch(options=options)
        for number in range(writers_n):
            group.start(
                f"paced-writer-{number}",
                workers.paced_writer,
                conninfo,
                tag,
                number,
                writers_n,
                rate,
                per_writer,
                group.ready,
                group.go,
                group.results,
            )
        group.wait_ready(writers_n)
        prefix = f"{tag}-"
        group.go.set()
        deadline = time.monotonic() + plan.latency_seconds + 60
        while len(delivered) < expected and time.monotonic() < deadline:
            event = stream.try_next(timeout=0.5)
            if event is None:
                group.check()
                continue
            now = time.monotonic_ns()
            doc_id = str(event["documentKey"]["_id"])
            if doc_id.startswith(prefix):
                delivered[doc_id] = now
        stream.close()
        answers = group.collect(writers_n, timeout=60)
    commits: dict[str, int] = {}
    late = 0
    first = math.inf
    for _, payload in answers:
        commits.update(dict(payload["commits"]))
        late += int(payload["late"])
        first = min(first, float(payload["start"]))
    last_commit = max(commits.values()) / 1e9
    latencies = [(delivered[k] - commits[k]) / 1e6 for k in commits if k in delivered]
    result = LatencyResult(
        options=_describe(options),
        offered=rate,
        achieved=len(commits) / (last_commit - first),
        writers=writers_n,
        sent=len(commits),
        delivered=len(latencies),
        late_sends=late,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies) if latencies else math.nan,
        other_cpu=meter.others_cores(),
    )
    log(
        f"latency at {rate:,.0f}/s offered ({result.achieved:,.0f}/s written), "
        f"{result.options}: "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms, "
        f"{result.delivered:,}/{result.sent:,} delivered"
    )
    return result


def _describe(options: WatchOptions | None) -> str:
    if options is None:
        return f"default (poll backoff up to {WatchOptions().poll_interval * 1000:g} ms)"
    return f"poll_interval {options.poll_interval * 1000:g} ms"


def measure_latency(bs: BenchServer, plan: Plan, log: Progress) -> list[LatencyResult]:
    """Paced writer processes insert; one stream reads at "now" in this process.

    Each rate runs with the default watch options (what the services get) and,
    to show what the polling backoff costs, with ``plan.latency_fast_poll``.
    """
    db = bs.create_database("bench_latency")
    results: list[LatencyResult] = []
    variants: list[WatchOptions | None] = [None]
    if plan.latency_fast_poll is not None:
        variants.append(WatchOptions(poll_interval=plan.latency_fast_poll))
    with PostgresStore(bs.conninfo(db), db) as store:
        for rate in plan.latency_rates:
            for options in variants:
                log(
                    f"latency: {plan.latency_writers} writers offering {rate:,.0f} events/s "
                    f"for {plan.latency_seconds:g} s, stream {_describe(options)}"
                )
                results.append(_latency_at(bs, db, store, rate, plan, log, options))
    bs.server.drop_database(db)
    return results


# -- 4. lost changes: naive poller versus the change stream -------------------------


@dataclass(frozen=True)
class LossResult:
    writers: int
    seconds: float
    hold_ms: tuple[float, float]
    transactions: int
    changes: int
    naive_lost: int
    naive_duplicates: int
    stream_lost: int
    stream_duplicates: int
    stream_out_of_order: int
    stream_extra: int
    other_cpu: float


SHARED_IDS = 200


def measure_loss(bs: BenchServer, plan: Plan, log: Progress) -> LossResult:
    """8 writers hold transactions open; a naive poller and the stream read side by side."""
    db = bs.create_database("bench_loss")
    conninfo = bs.conninfo(db)
    prefill(conninfo, SHARED_IDS)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM datastore_changelog").fetchone()
    start_id = int(row[0]) if row else 0
    meter = bs.cpu_meter()
    log(
        f"lost changes: {plan.loss_writers} writers, transactions held open "
        f"{plan.loss_hold_ms[0]:g}-{plan.loss_hold_ms[1]:g} ms, for {plan.loss_seconds:g} s"
    )
    with Workers() as group:
        group.start(
            "naive-poller",
            workers.naive_poller,
            conninfo,
            start_id,
            group.ready,
            group.go,
            group.stop,
            group.results,
        )
        group.start(
            "change-stream",
            workers.stream_consumer,
            conninfo,
            db,
            2.0,
            group.ready,
            group.go,
            group.stop,
            group.results,
        )
        for number in range(plan.loss_writers):
            group.start(
                f"holding-writer-{number}",
                workers.holding_writer,
                conninfo,
                number,
                plan.loss_seconds,
                plan.loss_hold_ms,
                0.5,
                SHARED_IDS,
                group.ready,
                group.go,
                group.results,
            )
        group.wait_ready(plan.loss_writers + 2)
        group.go.set()
        answers = group.collect(plan.loss_writers, timeout=plan.loss_seconds + 120)
        log("lost changes: writers done; letting both readers catch up")
        group.stop.set()
        answers += group.collect(2, timeout=120)
    transactions = sum(int(p["transactions"]) for kind, p in answers if kind == "writer")
    by_kind: dict[str, dict[str, Any]] = {kind: p for kind, p in answers if kind != "writer"}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        truth = {
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM datastore_changelog WHERE table_name = 'health_events' AND id > %s",
                (start_id,),
            ).fetchall()
        }
    naive_seen: list[int] = by_kind["naive"]["seen"]
    stream_seen: list[int] = by_kind["stream"]["seen"]
    stream_counts = Counter(stream_seen)
    result = LossResult(
        writers=plan.loss_writers,
        seconds=plan.loss_seconds,
        hold_ms=plan.loss_hold_ms,
        transactions=transactions,
        changes=len(truth),
        naive_lost=len(truth - set(naive_seen)),
        naive_duplicates=len(naive_seen) - len(set(naive_seen)),
        stream_lost=len(truth - set(stream_seen)),
        stream_duplicates=sum(c - 1 for c in stream_counts.values() if c > 1),
        stream_out_of_order=int(by_kind["stream"]["out_of_order"]),
        stream_extra=len(set(stream_seen) - truth),
        other_cpu=meter.others_cores(),
    )
    log(
        f"lost changes of {result.changes:,} ({transactions:,} transactions): "
        f"naive poller {result.naive_lost:,}, change stream {result.stream_lost:,} "
        f"(duplicates {result.stream_duplicates}, out of version order "
        f"{result.stream_out_of_order})"
    )
    bs.server.drop_database(db)
    return result
