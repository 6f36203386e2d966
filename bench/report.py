"""The machine description and the Markdown report of one run."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import WRITE_DATABASES, DrainResult, Plan, WriteCell
from bench.prune import PruneWait
from bench.side_by_side import (
    READER_NAMES,
    READERS,
    SHARED_IDS,
    IdleResult,
    ReaderResult,
    SideBySideResult,
)

TARGET_RATIO = 0.75
TARGET_DRAIN = 10_000.0
TARGET_P99_MS = 10.0
TARGET_IDLE = 20.0
TARGET_PRUNE_WAIT_MS = 50.0


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
    side_by_side: list[SideBySideResult]
    alone: list[SideBySideResult]
    idle: list[IdleResult]
    prunes: list[PruneWait]


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
    for run, alone in zip(r.side_by_side, r.alone, strict=True):
        ours = alone.readers["stream"]
        rows.append(
            (
                f"Our stream, p99 commit-to-delivery at {_n(run.offered)} changes/s",
                f"{ours.p99_ms:.1f} ms alone; side by side {run.readers['stream'].p99_ms:.1f} "
                f"ms, NVSentinel's watcher {run.readers['nvsentinel'].p99_ms:.1f} ms",
                "<= 10 ms",
                _met(ours.p99_ms <= TARGET_P99_MS),
            )
        )
    for run in r.side_by_side:
        for reader in READERS:
            result = run.readers[reader]
            if reader == "stream":
                alone = next(a for a in r.alone if a.offered == run.offered)
                result = _worst(result, alone.readers["stream"])
            rows.append(
                (
                    f"Lost changes at {_n(run.offered)}/s, {READER_NAMES[reader]}",
                    f"{result.lost:,} of {run.changes:,}"
                    + (f" ({result.lost / run.changes:.1%})" if result.lost else ""),
                    "0" if reader == "stream" else "(comparison)",
                    _met(result.lost == 0) if reader == "stream" else "",
                )
            )
    for idle in r.idle:
        if idle.reader == "stream":
            rows.append(
                (
                    "Idle cost of our stream, notifications "
                    + ("on" if idle.notifications else "off"),
                    f"{idle.statements_per_s:.1f} statements/s",
                    "<= 20 /s",
                    _met(idle.statements_per_s <= TARGET_IDLE),
                )
            )
    for prune in r.prunes:
        batched = prune.batches > 1
        rows.append(
            (
                f"Longest stream wait during a prune of {_n(prune.deleted)} changes, " + prune.mode,
                f"{prune.max_ms:.1f} ms",
                "<= 50 ms" if batched else "(comparison)",
                _met(prune.max_ms <= TARGET_PRUNE_WAIT_MS) if batched else "",
            )
        )
    return rows


def _worst(a: ReaderResult, b: ReaderResult) -> ReaderResult:
    """The run of the two that lost more (the target counts both runs of our stream)."""
    return a if a.lost >= b.lost else b


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
        "every run). Four databases on the same server, each one layer more:"
    )
    out += [
        "",
        "- **NVSentinel's**: NVSentinel's own schema, its three migration files (00001-00003) "
        "applied with `psql` as NVSentinel documents it, nothing of this project: its "
        "trigger `log_table_changes` writes every changed row whole into "
        "`datastore_changelog` and always sends `pg_notify` on `nvsentinel_changes`. The "
        "baseline of a user without this project.",
        "- **NVSentinel's, quiet**: the same schema and trigger with notifications off: "
        "our migration 0001 alone (NVSentinel's schema version 3 in our SQL, whose "
        "`log_table_changes` skips `pg_notify` when `nvsentinel.notify_changes = off`), "
        "with `ALTER DATABASE ... SET nvsentinel.notify_changes = off`. Against the first "
        "column: what the notifications cost.",
        "- **ours**: all of this project's migrations (NVSentinel's schema and trigger, "
        "plus our typed extraction trigger on the event tables and change positions on "
        "the change log), notifications on (the default).",
        "- **ours, quiet**: the same with notifications off (this project's streams use "
        "them only as a wake-up). Against NVSentinel's, quiet: what our capture costs.",
        "",
        "The statements are NVSentinel's store-client's, the same on all four. `insert`: "
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
        "notifications off vs on = NVSentinel's, quiet over NVSentinel's; our capture = "
        "ours, quiet over NVSentinel's, quiet.",
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
                f"{cell.capture_vs_trigger:.1%}",
                " vs ".join(" / ".join(_n(v) for v in values) for values in rounds),
                _range(cell.round_ratios("ours", "nvsentinel")),
                f"{cell.other_cpu:.2f}",
            )
        )
    out += _table(
        (
            "Workload",
            "fsync",
            "Clients",
            "NVSentinel's",
            "NVSentinel's, quiet",
            "Ours",
            "Ours, quiet",
            "Ours vs NVSentinel's",
            "Notifications off vs on",
            "Our capture",
            "Rounds (in column order)",
            "Ours vs NVSentinel's per round",
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

    out += ["", "## 3. Side by side: NVSentinel's watcher, our stream, a naive poller", ""]
    out.append(
        f"{p.side_writers} writer processes start transactions at a fixed pace for "
        f"{p.side_seconds:g} s; each inserts a health event, holds the transaction open "
        f"{p.side_hold_ms[0]:g}-{p.side_hold_ms[1]:g} ms while the others commit, and in "
        f"{p.side_update_share:.0%} of them then updates the quarantine status of one of "
        f"{SHARED_IDS} shared events (row locks), so commits come out of id order. Three "
        "readers run side by side on the same database, each started before the writers: "
        "**NVSentinel's watcher** (its own store-client's HYBRID watcher, as its services "
        "run it: LISTEN `nvsentinel_changes`, fetch by id, fallback poll, `MarkProcessed` "
        "per event; through `nvsentinel-client-check watch`), **our stream** (`watch()`, "
        "default options, in a process of its own) and the **naive** `id > last` poller "
        "(1 ms pause when empty). Lost: changes of the run (the changelog's rows) a reader "
        "never delivered, after catching up until quiet for 2 s. Latency: the monotonic "
        "clock when the reader had the change (NVSentinel's: when it came off its channel, "
        "before `MarkProcessed`) minus when the writer's `COMMIT` returned, for the "
        "inserted events. Late sends: transactions a writer started more than 1 ms late."
    )
    out += [
        "",
        "Each rate then runs again with our stream alone on the same writers (no other "
        "reader): at 1,000 changes/s NVSentinel's watcher, which runs a `MarkProcessed` "
        "statement per event, takes a good part of the 2 cores, and the alone rows show "
        "our stream's own latency without that neighbour. Offered: changes/s (a "
        "transaction makes one change, or two with the update).",
        "",
    ]
    rows = []
    runs = [(run, "") for run in r.side_by_side] + [(run, ", alone") for run in r.alone]
    runs.sort(key=lambda pair: (pair[0].offered, pair[1]))
    for run, label in runs:
        for reader in READERS:
            if reader not in run.readers:
                continue
            x = run.readers[reader]
            rows.append(
                (
                    _n(run.offered),
                    READER_NAMES[reader] + label,
                    f"{x.delivered:,} of {run.changes:,}",
                    _n(x.lost),
                    _n(x.duplicates),
                    f"{x.p50_ms:.1f}",
                    f"{x.p99_ms:.1f}",
                    f"{x.max_ms:.1f}",
                )
            )
    out += _table(
        (
            "Offered changes/s",
            "Reader",
            "Delivered",
            "Lost",
            "Duplicates",
            "p50 ms",
            "p99 ms",
            "max ms",
        ),
        rows,
    )
    out.append("")
    out += _table(
        (
            "Offered changes/s",
            "Run",
            "Paced tx/s",
            "Written tx/s",
            "Transactions",
            "Changes",
            "Late sends",
            "Our stream out of version order",
            "Other CPU",
        ),
        [
            (
                _n(run.offered),
                "our stream alone" if label else "side by side",
                _n(run.tx_rate),
                _n(run.achieved),
                _n(run.transactions),
                _n(run.changes),
                _n(run.late_sends),
                _n(run.out_of_version_order),
                f"{run.other_cpu:.2f}",
            )
            for run, label in runs
        ],
    )

    out += ["", "## 4. Idle cost", ""]
    out.append(
        f"One reader on a database nobody writes, for {p.idle_seconds:g} s: the statements "
        "per second the server ran for it (`pg_stat_database.xact_commit + xact_rollback` "
        "of the database; every statement of these readers is its own transaction), less "
        "the same count with no reader. Our stream polls every `poll_interval` (100 ms) "
        "when idle whether notifications are on or not: a notification only ends a wait "
        "early, and a change held back by a transaction that sends none (another "
        "service's `MarkProcessed`, a prune) must still be found by a poll. NVSentinel's "
        "watcher polls every 30 s (every 5 s after 30 s without a notification)."
    )
    out.append("")
    out += _table(
        ("Reader", "Notifications", "Statements/s"),
        [
            (
                READER_NAMES[x.reader],
                "on" if x.notifications else "off",
                f"{x.statements_per_s:.1f}",
            )
            for x in r.idle
        ],
    )

    out += ["", "## 5. Streams during a large prune", ""]
    out.append(
        f"`datastore_changelog` filled with {p.prune_changes:,} changes two days old (about "
        "1 KB each), then pruned with a 1-hour max age while one writer inserts "
        f"{p.prune_rate:g} events/s and our stream reads them. A prune is a writing "
        "transaction, and a stream delivers a change only after every transaction that "
        "got its id earlier has ended: one prune transaction holds back every change "
        "committed while it runs. Batches (`datastore_changelog_prune(max_age, "
        "batch_size)`, each its own transaction, as the prune CronJob and `nvsentinel-store "
        "prune` run it) hold it back for one batch at most. Wait: commit-to-delivery of "
        "the events committed while the prune ran."
    )
    out.append("")
    out += _table(
        (
            "Prune",
            "Changes deleted",
            "Transactions",
            "Seconds",
            "Events meanwhile",
            "p50 ms",
            "max ms",
        ),
        [
            (
                x.mode,
                _n(x.deleted),
                _n(x.batches),
                f"{x.prune_seconds:.2f}",
                _n(x.during),
                f"{x.p50_ms:.1f}",
                f"{x.max_ms:.1f}",
            )
            for x in r.prunes
        ],
    )
    out += [
        "",
        "## Setup",
        "",
        "The server is the datastore tests' own (`devsupport/postgres.py`): Debian's "
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
