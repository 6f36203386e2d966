"""Write throughput and drain rate; the plan and progress output every measurement shares."""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.server import NVSENTINEL_SCHEMA_MIGRATION, BenchServer
from bench.writes import pgbench, prefill, prefill_events, prefilled_id, scripts
from devsupport.documents_sql import sql_document
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from nvsentinel_store.store import Pipeline


@dataclass(frozen=True)
class Plan:
    """How long and how much each measurement runs."""

    write_seconds: int
    write_rounds: int
    write_prefill: int
    #: (workload, fsync on, clients) per cell, in the order run.
    write_cells: tuple[tuple[str, bool, int], ...]
    drain_changes: int
    side_rates: tuple[float, ...]
    side_seconds: float
    side_writers: int
    side_hold_ms: tuple[float, float]
    side_update_share: float
    idle_seconds: float
    prune_changes: int
    prune_batch: int
    prune_rate: float


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
    side_rates=(10.0, 100.0, 1000.0),
    side_seconds=10.0,
    side_writers=8,
    side_hold_ms=(1.0, 5.0),
    side_update_share=0.5,
    idle_seconds=10.0,
    prune_changes=1_000_000,
    prune_batch=5_000,
    prune_rate=100.0,
)
QUICK = Plan(
    write_seconds=1,
    write_rounds=1,
    write_prefill=2_000,
    write_cells=(("insert", True, 1), ("insert", True, 8), ("mix", True, 8)),
    drain_changes=10_000,
    side_rates=(10.0, 100.0, 1000.0),
    side_seconds=2.0,
    side_writers=8,
    side_hold_ms=(1.0, 5.0),
    side_update_share=0.5,
    idle_seconds=3.0,
    prune_changes=100_000,
    prune_batch=5_000,
    prune_rate=100.0,
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


#: The databases of the write benchmark, all on the same server, one layer
#: each: NVSentinel's own schema (its migration files; its trigger always
#: notifies); the same schema and trigger with notifications off (our 0001,
#: which is NVSentinel's schema with ``nvsentinel.notify_changes``, set off
#: for the database); ours (all our migrations: extraction and change
#: positions on top), notifications on as by default; ours with them off.
WRITE_DATABASES = ("nvsentinel", "nvsentinel-quiet", "ours", "ours-quiet")


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
        """NVSentinel's trigger with notifications off over the same with them on."""
        return self.ratio("nvsentinel-quiet", "nvsentinel")

    @property
    def capture_vs_trigger(self) -> float:
        """Our capture on top of NVSentinel's trigger, both with notifications off."""
        return self.ratio("ours-quiet", "nvsentinel-quiet")


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
    expected = (database.startswith("ours"), not database.endswith("-quiet"))
    if (extraction, notified) != expected:
        raise RuntimeError(
            f"write database {database} ({db}): extraction trigger {extraction}, "
            f"notification {notified}; expected {expected[0]} and {expected[1]}"
        )


def measure_writes(bs: BenchServer, plan: Plan, log: Progress) -> list[WriteCell]:
    """pgbench on NVSentinel's schema, ours and ours without notifications; interleaved."""
    log(
        "write throughput: preparing NVSentinel's schema, the same with notifications off, "
        "ours, and ours with notifications off"
    )
    dbs = {
        "nvsentinel": bs.create_nvsentinel_database("bench_writes_nvsentinel"),
        "nvsentinel-quiet": bs.create_database(
            "bench_writes_nvsentinel_quiet", through=NVSENTINEL_SCHEMA_MIGRATION
        ),
        "ours": bs.create_database("bench_writes_ours"),
        "ours-quiet": bs.create_database("bench_writes_ours_quiet"),
    }
    bs.set_notify_changes(dbs["nvsentinel-quiet"], False)
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
                f"notifications off vs on {cell.quiet_vs_notifying:.1%}; our capture "
                f"{cell.capture_vs_trigger:.1%} of the quiet trigger (medians); "
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


# -- shared ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
