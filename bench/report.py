"""The machine description and the Markdown report of one run."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import (
    SHARED_IDS,
    WRITE_DATABASES,
    DrainResult,
    LatencyResult,
    LossResult,
    Plan,
    WriteCell,
)

TARGET_RATIO = 0.75
TARGET_DRAIN = 10_000.0
TARGET_P99_MS = 20.0
TARGET_P99_RATE = 1000.0


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    postgresql: str


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return math.nan


def describe_machine(postgresql: str) -> Machine:
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        kernel=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        postgresql=postgresql,
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


@dataclass(frozen=True)
class Report:
    command: str
    date: str
    quick: bool
    plan: Plan
    machine: Machine
    load_start: str
    load_end: str
    other_cpu: float
    duration_s: float
    writes: list[WriteCell]
    drains: list[DrainResult]
    latencies: list[LatencyResult]
    loss: LossResult


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def summary_rows(r: Report) -> list[tuple[str, str, str, str]]:
    """(measurement, result, target, met) for the targets of the issue."""
    rows: list[tuple[str, str, str, str]] = []
    for cell in r.writes:
        if cell.workload == "insert" and cell.clients == 8 and cell.durable:
            kept = cell.ours_vs_nvsentinel
            rows.append(
                (
                    "Write throughput kept on top of NVSentinel's schema, 8 clients (inserts)",
                    f"{kept:.1%} ({_n(cell.median('ours'))} vs {_n(cell.median('nvsentinel'))} /s)",
                    ">= 75%",
                    _met(kept >= TARGET_RATIO),
                )
            )
    for drain in r.drains:
        if drain.delivered == drain.changes:  # unfiltered: every change is an event
            rows.append(
                (
                    f"Events drained by one consumer ({drain.label} changelog)",
                    f"{_n(drain.rate)} /s",
                    ">= 10,000 /s",
                    _met(drain.rate >= TARGET_DRAIN),
                )
            )
    for lat in r.latencies:
        if lat.offered == TARGET_P99_RATE and lat.options.startswith("default"):
            rows.append(
                (
                    f"Commit-to-delivery p99 at {_n(lat.offered)} events/s",
                    f"{lat.p99_ms:.1f} ms",
                    "<= 20 ms",
                    _met(lat.p99_ms <= TARGET_P99_MS and lat.delivered == lat.sent),
                )
            )
    loss = r.loss
    rows.append(
        (
            "Lost changes, project change stream",
            f"{loss.stream_lost:,} of {loss.changes:,}",
            "0",
            _met(loss.stream_lost == 0),
        )
    )
    rows.append(
        (
            "Lost changes, naive `id > last` poller (same writers)",
            f"{loss.naive_lost:,} of {loss.changes:,} ({loss.naive_lost / loss.changes:.1%})",
            "(comparison)",
            "",
        )
    )
    return rows


def _range(ratios: Sequence[float]) -> str:
    return f"{min(ratios):.0%}-{max(ratios):.0%}" if ratios else "-"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(r: Report) -> str:
    m = r.machine
    p = r.plan
    out: list[str] = ["# Change stream benchmarks", ""]
    out.append(
        "Written by `make bench` (`bench/changestream.py`); one run, numbers as measured. "
        "Targets are the issue's, for a 2-core machine."
        + (" **Quick run (`--quick`): short and small, not for comparison.**" if r.quick else "")
    )
    out += ["", "## Run", ""]
    out += _table(
        ("", ""),
        [
            ("Command", f"`{r.command}`"),
            ("Date (UTC)", r.date),
            ("CPU", f"{m.cpu}, {m.cores} cores"),
            ("Memory", f"{m.memory_gib:.1f} GiB"),
            ("Kernel", m.kernel),
            ("PostgreSQL", m.postgresql),
            ("Python", m.python),
            ("Load average (1/5/15 min) at start", r.load_start),
            ("Load average (1/5/15 min) at end", r.load_end),
            ("CPU used by other work during the run", f"{r.other_cpu:.2f} cores (average)"),
            ("Duration", f"{r.duration_s:.0f} s"),
        ],
    )
    out += [
        "",
        'The machine is shared. "Other CPU" columns give the cores that work other than the '
        "benchmark (its own processes and its PostgreSQL server) used on average while that "
        f"measurement ran, out of {m.cores}: numbers taken while other work ran are not "
        "comparable. The load average includes the benchmark's own processes.",
    ]
    out += ["", "## Targets", ""]
    out += _table(("Measurement", "Result", "Target", "Met"), summary_rows(r))

    out += ["", "## 1. Write throughput (transactions/s)", ""]
    out.append(
        "pgbench (PostgreSQL's C client, so that 8 clients take little of the 2 cores and "
        "the number is the database's), same TLS connection and role as the services, "
        "documents built by the server; one statement per transaction, "
        f"{p.write_seconds} s per run, {p.write_rounds} round(s) rotating which database "
        "goes first (median shown, every round in the columns after; a `CHECKPOINT` before "
        "every run). Three databases on the same server:"
    )
    out += [
        "",
        "- **NVSentinel's**: NVSentinel's own schema, its three migration files (00001-00003) "
        "applied with `psql` as NVSentinel documents it, nothing of this project: its "
        "trigger `log_table_changes` writes every changed row whole into "
        "`datastore_changelog` and always sends `pg_notify` on `nvsentinel_changes`. The "
        "baseline of a user without this project.",
        "- **ours**: this project's migrations (NVSentinel's schema version 3 with its "
        "trigger, plus our typed extraction trigger on the event tables and change "
        "positions on the change log), notifications on (the default).",
        "- **ours, quiet**: the same migrations with `ALTER DATABASE ... SET "
        "nvsentinel.notify_changes = off`: notifications turned off by choice (this "
        "project's streams do not need them).",
        "",
        "The statements are NVSentinel's store-client's, the same on all three. `insert`: "
        "a new health event per transaction, `INSERT INTO health_events (node_name, "
        "event_type, severity, recommended_action, node_quarantined, "
        "user_pods_eviction_status, document) VALUES (...)` as its "
        "`insertHealthEventRecord` writes it (the two status columns NULL, the document "
        "about 1 KB with a new random UUID as `_id`). `mix`: half inserts, half "
        "quarantine-status updates of one of "
        f"{p.write_prefill:,} pre-filled events as `UpdateNodeQuarantineStatus` writes them "
        "(without its span id): `UPDATE health_events SET node_quarantined = <state>, "
        "document = jsonb_set(document, '{healtheventstatus,nodequarantined}', "
        "to_jsonb(<state>)), updated_at = NOW() WHERE id = <uuid>`. "
        "Ours vs NVSentinel's = the throughput kept with this project's layer; "
        "notifications off vs on = ours, quiet over ours.",
        "",
    ]
    rows = []
    for cell in r.writes:
        rounds = [cell.tps[db] for db in WRITE_DATABASES]
        rows.append(
            (
                cell.workload,
                "on" if cell.durable else "off",
                str(cell.clients),
                *(_n(cell.median(db)) for db in WRITE_DATABASES),
                f"{cell.ours_vs_nvsentinel:.1%}",
                f"{cell.quiet_vs_notifying:.1%}",
                " vs ".join(" / ".join(_n(v) for v in values) for values in rounds),
                _range(cell.round_ratios("ours", "nvsentinel")),
                _range(cell.round_ratios("ours-quiet", "ours")),
                f"{cell.other_cpu:.2f}",
            )
        )
    out += _table(
        (
            "Workload",
            "fsync",
            "Clients",
            "NVSentinel's",
            "Ours",
            "Ours, quiet",
            "Ours vs NVSentinel's",
            "Notifications off vs on",
            "Rounds (NVSentinel's vs ours vs quiet)",
            "Ours vs NVSentinel's per round",
            "Off vs on per round",
            "Other CPU",
        ),
        rows,
    )
    failed = sum(cell.failed for cell in r.writes)
    out += ["", f"Failed pgbench transactions: {failed:,}."]

    out += ["", "## 2. Drain: one consumer reading the changelog from the beginning", ""]
    out.append(
        "`watch(from_beginning=True)` with the default options through the store client "
        "(TLS verify-full), timed from opening the stream to the last event. `lifecycle`: "
        "each event inserted, then updated three times (quarantine, eviction, remediation), "
        "so three changes in four carry a document before and after; `filtered`: the same "
        "changelog through a `$match` on `operationType` and "
        "`updateDescription.updatedFields.healtheventstatus.nodequarantined` (rate = changes "
        "scanned per second)."
    )
    out.append("")
    out += _table(
        ("Changelog", "Changes", "Events delivered", "Seconds", "Changes/s", "Other CPU"),
        [
            (
                d.label,
                _n(d.changes),
                _n(d.delivered),
                f"{d.seconds:.2f}",
                _n(d.rate),
                f"{d.other_cpu:.2f}",
            )
            for d in r.drains
        ],
    )

    out += ["", "## 3. Commit-to-delivery latency", ""]
    out.append(
        f"{p.latency_writers} writer processes insert at a fixed pace for "
        f"{p.latency_seconds:g} s (psycopg, one autocommit `INSERT` per event, the store "
        'client\'s statement); one stream started at "now" reads in the benchmark '
        "process through the store client. Latency = the monotonic clock when the stream "
        "returns the event minus when the writer's `INSERT` returned. Each rate runs with "
        "the default watch options (what the services get) and, in a full run, with a 5 ms "
        "polling cap, which shows what the polling backoff costs. Late sends: events a writer sent "
        "more than 1 ms after their due time (the writers could not keep the pace). The "
        "target is p99 <= 20 ms at 1,000/s; 10/s shows sparse events (the usual case for "
        "health events), where a stream that found nothing has backed off."
    )
    out.append("")
    out += _table(
        (
            "Offered /s",
            "Stream options",
            "Written /s",
            "Delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "Late sends",
            "Other CPU",
        ),
        [
            (
                _n(lat.offered),
                lat.options,
                _n(lat.achieved),
                f"{lat.delivered:,} of {lat.sent:,}",
                f"{lat.p50_ms:.1f}",
                f"{lat.p99_ms:.1f}",
                f"{lat.max_ms:.1f}",
                f"{lat.late_sends:,}",
                f"{lat.other_cpu:.2f}",
            )
            for lat in r.latencies
        ],
    )

    loss = r.loss
    out += ["", "## 4. Lost changes under concurrent writers", ""]
    out.append(
        f"{loss.writers} writer processes for {loss.seconds:g} s; each transaction inserts "
        f"an event, holds the transaction open {loss.hold_ms[0]:g}-{loss.hold_ms[1]:g} ms "
        "and in half the transactions then updates the quarantine status of one of "
        f"{SHARED_IDS} shared events. Side by side: a naive poller (`id > last` on the changelog's "
        "BIGSERIAL, 1 ms pause when empty) and the project's stream (`watch()`, default "
        "options). Lost = changelog rows committed that the reader never returned."
    )
    out.append("")
    out += _table(
        ("Reader", "Changes committed", "Lost", "Duplicates", "Out of version order"),
        [
            (
                "naive `id > last`",
                _n(loss.changes),
                _n(loss.naive_lost),
                _n(loss.naive_duplicates),
                "-",
            ),
            (
                "change stream",
                _n(loss.changes),
                _n(loss.stream_lost),
                _n(loss.stream_duplicates),
                _n(loss.stream_out_of_order),
            ),
        ],
    )
    out += [
        "",
        f"{loss.transactions:,} transactions committed; other work used "
        f"{loss.other_cpu:.2f} cores meanwhile.",
        "",
        "## Setup",
        "",
        "The server is the datastore tests' own (`tests/fixtures/postgres.py`): Debian's "
        "PostgreSQL on 127.0.0.1, TLS only, client-certificate authentication; every "
        "client connects over TCP with `sslmode=verify-full` as the application role "
        "`nvsentinel`. The schema comes from our migrations through "
        "`nvsentinel_store.migrations.apply` as `nvsentinel_migrator` (for NVSentinel's "
        "database in section 1: NVSentinel's own files through `psql`, as the same role). "
        "The fixture turns `fsync` off for test speed; the benchmark turns it back on "
        "(production durability) for everything except the `fsync off` write rows, which "
        "show the CPU cost of this project's layer without the disk. Other server "
        "settings are PostgreSQL's defaults. Documents are health events shaped as the "
        "services store them (about 1 KB).",
        "",
    ]
    return "\n".join(out)
