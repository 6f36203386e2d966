"""Benchmark ``nvsentinel-store migrate`` from mongoexport files: documents per second.

The files are generated like the migration tests' (``devsupport/documents.py``):
realistic health events in mongoexport's default relaxed mode and maintenance
events in canonical mode, one document per line. Each round imports them into a
fresh database of a PostgreSQL started for the run (loopback, TLS with client
certificates, ``fsync`` on) as the tables' owner, exactly as the CLI does
(:func:`nvsentinel_store.migrate.migrate`, batches of 5,000, no change events),
then runs the same import again (every document already present) and a dry
run (read and check only). The rate is documents read divided by wall time,
parsing included. Target: >= 20,000 documents/s for the first import.

Run: ``python -m bench.migrate --write docs/benchmarks-migration.md``
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.report import Machine, describe_machine, load_average
from bench.server import BenchServer, running_server
from devsupport.documents import documents
from devsupport.mongoexport import write_export
from devsupport.postgres import MIGRATION_USER
from nvsentinel_store import migrate
from nvsentinel_store.store import COLLECTIONS

TARGET_DOCS_PER_S = 20_000.0
HEALTH_EVENTS = 90_000
MAINTENANCE_EVENTS = 10_000
ROUNDS = 3


@dataclass(frozen=True)
class Round:
    imported: int
    import_s: float
    rerun_s: float
    dry_run_s: float
    documents: int
    #: Cores other work on the machine took during the import (bench.cpu).
    others_cores: float

    @property
    def import_rate(self) -> float:
        return self.documents / self.import_s

    @property
    def rerun_rate(self) -> float:
        return self.documents / self.rerun_s

    @property
    def dry_run_rate(self) -> float:
        return self.documents / self.dry_run_s


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_files(directory: Path, health: int, maintenance: int) -> tuple[list[Path], int]:
    files = [
        write_export(directory / "health_events.json", list(documents("health_events", health, 1))),
        write_export(
            directory / "maintenance_events.json",
            list(documents("maintenance_events", maintenance, 2)),
            "canonical",
        ),
    ]
    return files, health + maintenance


def timed_import(
    bs: BenchServer, dbname: str, files: list[Path], options: migrate.MigrateOptions
) -> tuple[migrate.MigrationReport, float]:
    with psycopg.connect(bs.conninfo(dbname, MIGRATION_USER)) as conn:
        sources = migrate.file_sources(files, COLLECTIONS)
        started = time.perf_counter()
        report = migrate.migrate(conn, sources, options)
        return report, time.perf_counter() - started


def measure(bs: BenchServer, files: list[Path], total: int, rounds: int) -> list[Round]:
    results = []
    for number in range(1, rounds + 1):
        dbname = bs.create_database(f"bench_migrate_{number}")
        bs.checkpoint()
        meter = bs.cpu_meter()
        report, import_s = timed_import(bs, dbname, files, migrate.MigrateOptions())
        others = meter.others_cores()
        imported = sum(s.imported for s in report.summaries.values())
        if imported != total or report.rejected:
            raise RuntimeError(f"round {number}: imported {imported} of {total}: {report}")
        _log(
            f"round {number}: import {total / import_s:,.0f} docs/s ({import_s:.1f}s; "
            f"other work {others:.2f} cores)"
        )
        report, rerun_s = timed_import(bs, dbname, files, migrate.MigrateOptions())
        present = sum(s.already_present for s in report.summaries.values())
        if present != total:
            raise RuntimeError(f"round {number}: re-run found {present} of {total} present")
        _log(f"round {number}: re-run {total / rerun_s:,.0f} docs/s ({rerun_s:.1f}s)")
        _, dry_s = timed_import(bs, dbname, files, migrate.MigrateOptions(dry_run=True))
        _log(f"round {number}: dry run {total / dry_s:,.0f} docs/s ({dry_s:.1f}s)")
        results.append(Round(imported, import_s, rerun_s, dry_s, total, others))
    return results


def render(
    command: str,
    date: str,
    machine: Machine,
    fsync: str,
    file_bytes: int,
    rounds: list[Round],
    load: tuple[str, str],
    total: int,
) -> str:
    def median(get: Callable[[Round], float]) -> float:
        return statistics.median(get(r) for r in rounds)

    rate = median(lambda r: r.import_rate)
    met = "yes" if rate >= TARGET_DOCS_PER_S else "NO"
    lines = [
        "# Migration benchmark (`nvsentinel-store migrate --from-files`)",
        "",
        f"Generated by `{command}` on {date} UTC. Do not edit by hand.",
        "",
        "## Result",
        "",
        "| measurement | median of rounds | target | met |",
        "|---|---:|---:|---|",
        f"| import from files, {total:,} documents | {rate:,.0f} docs/s | "
        f">= {TARGET_DOCS_PER_S:,.0f} docs/s | {met} |",
        f"| re-run, every document already present | {median(lambda r: r.rerun_rate):,.0f} "
        "docs/s | | |",
        f"| dry run (read and check only) | {median(lambda r: r.dry_run_rate):,.0f} docs/s | | |",
        "",
        "## Rounds",
        "",
        "| round | import s | import docs/s | other work during import (cores) | re-run s "
        "| re-run docs/s | dry run s | dry run docs/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rounds, start=1):
        lines.append(
            f"| {i} | {r.import_s:.2f} | {r.import_rate:,.0f} | {r.others_cores:.2f} | "
            f"{r.rerun_s:.2f} | "
            f"{r.rerun_rate:,.0f} | {r.dry_run_s:.2f} | {r.dry_run_rate:,.0f} |"
        )
    lines += [
        "",
        "## What was measured",
        "",
        f"- Input: `health_events.json` ({HEALTH_EVENTS:,} health events, relaxed extended "
        f"JSON, mongoexport's default) and `maintenance_events.json` ({MAINTENANCE_EVENTS:,} "
        f"maintenance events, canonical mode), {file_bytes / 1e6:.1f} MB, generated by "
        "`devsupport/documents.py` (ObjectId and UUID ids, dates, 64-bit integers; "
        "health events at every lifecycle stage).",
        "- Each round: a fresh database with the schema (all indexes and triggers), then "
        "`migrate.migrate()` as `nvsentinel_migrator` over TLS (verify-full, client "
        "certificate): batches of 5,000 documents, each `COPY`ed into a temporary staging "
        "table and moved with `INSERT ... SELECT ... ON CONFLICT DO NOTHING` in one "
        "transaction that disables the change log trigger `<table>_changes` (no change events).",
        "- Rate = documents read / wall time of the whole call: reading, extended JSON "
        "parsing (`bson.json_util`), checks, COPY, the extraction trigger and index "
        "maintenance in PostgreSQL, the commit of each batch. Both files are over 4 MB, "
        "so each is parsed by a separate Python process while the importer's writer "
        "thread loads the previous batch.",
        "- Re-run: the same files again; every insert conflicts, nothing is written.",
        "- Dry run: everything but the writes (the target is only asked which ids it holds).",
        "- Other work: the CPU that processes other than the importer and its PostgreSQL "
        "took during the import, in cores (`bench/cpu.py`; the machine is shared). The "
        "import needs both cores (one parses, one runs the server's inserts), so other "
        "work lowers the rate.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.cpu}, {machine.cores} cores; memory {machine.memory_gib:.1f} GiB",
        f"- {machine.kernel}; Python {machine.python}; PostgreSQL {machine.postgresql} "
        f"(fsync {fsync}, on 127.0.0.1, the importer and the server share the cores)",
        f"- Load average (1/5/15 min) at start {load[0]}, at end {load[1]}",
        "",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.migrate",
        description="Benchmark nvsentinel-store migrate from mongoexport files on a PostgreSQL "
        "started for the run (loopback, TLS, client certificates). Needs Debian's PostgreSQL "
        "server binaries (make setup).",
        epilog="Progress goes to stderr, the Markdown report to stdout.",
    )
    parser.add_argument(
        "--write", type=Path, metavar="FILE", help="also write the report to FILE (Markdown)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="10x fewer documents, one round (a smoke run)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.migrate", *shown])
    scale = 10 if args.quick else 1
    rounds = 1 if args.quick else ROUNDS
    load_start = load_average()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    workdir = Path(tempfile.mkdtemp(prefix="nvsentinel-bench-migrate-"))
    try:
        _log("generating the export files")
        files, total = make_files(workdir, HEALTH_EVENTS // scale, MAINTENANCE_EVENTS // scale)
        file_bytes = sum(f.stat().st_size for f in files)
        _log(f"{total:,} documents, {file_bytes / 1e6:.1f} MB; starting PostgreSQL")
        with running_server() as bs:
            bs.set_durable(True)
            machine = describe_machine(bs.version)
            results = measure(bs, files, total, rounds)
            fsync = bs.fsync()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(
        command, date, machine, fsync, file_bytes, results, (load_start, load_average()), total
    )
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        _log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
