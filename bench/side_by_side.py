"""Three readers on the same writers: NVSentinel's watcher, our stream, a naive poller.

At each rate, 8 writer processes commit out of id order (each transaction is
held open 1-5 ms while the others commit; half of them also update a shared
event) and three readers run side by side on the same database:

- NVSentinel's own HYBRID watcher (LISTEN ``nvsentinel_changes``, fetch by
  id, a fallback poll, ``MarkProcessed`` per event), run by the Go program
  ``nvsentinel-client-check watch`` built against NVSentinel's store-client;
- our change stream (``watch()``, default options) in a process of its own;
- the naive ``id > last`` poller.

Each reader reports the changelog ids it delivered and when; the changelog
itself is the truth. Lost: changes of the run a reader never delivered.
Latency: from the writer's ``COMMIT`` returning to the reader having the
change, for the inserted events (one per transaction), on the same monotonic
clock.

The idle cost: statements per second an idle reader makes the server run,
counted by the server (``pg_stat_database.xact_commit`` of the database, less
what the database does with no reader), with notifications on and off.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg

from bench import workers
from bench.measure import Plan, Progress, percentile
from bench.processes import Workers
from bench.server import BenchServer
from bench.writes import prefill
from nvsentinel_store.providers.postgresql.provider import PostgresStore, StoreOptions

REPO = Path(__file__).resolve().parents[1]
#: Built by ``make setup`` (hack/build-nvsentinel-client.sh).
CLIENT = REPO / ".bin" / "nvsentinel-client-check"
#: Pre-filled events the writers' updates pick from (contention on row locks).
SHARED_IDS = 200
#: A reader is done catching up once it delivered nothing new for this long.
QUIET_S = 2.0
#: The longest a reader may take to catch up after the writers stopped.
CATCH_UP_S = 60.0
READERS = ("nvsentinel", "stream", "naive")
READER_NAMES = {
    "nvsentinel": "NVSentinel's watcher (HYBRID)",
    "stream": "our change stream",
    "naive": "naive `id > last` poller",
}


@dataclass(frozen=True)
class ReaderResult:
    reader: str
    delivered: int
    lost: int
    duplicates: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class SideBySideResult:
    #: Changes/s offered; the writers are paced at ``tx_rate`` transactions/s.
    offered: float
    tx_rate: float
    achieved: float
    writers: int
    transactions: int
    changes: int
    late_sends: int
    out_of_version_order: int
    readers: dict[str, ReaderResult]
    other_cpu: float


def service_env(bs: BenchServer, dbname: str) -> dict[str, str]:
    """The environment of an NVSentinel service: ``DATASTORE_*`` as the chart sets them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "DATASTORE_", "MONGODB_", "POSTGRESQL_"))
    }
    env.update(bs.server.datastore_env(dbname, user="nvsentinel", sslmode="verify-full"))
    cert = bs.server.client_cert("nvsentinel")
    env.update(
        DATASTORE_SSLCERT=str(cert.cert),
        DATASTORE_SSLKEY=str(cert.key),
        DATASTORE_SSLROOTCERT=str(cert.ca),
    )
    return env


class NvsentinelWatcher:
    """``nvsentinel-client-check watch`` on health_events; its lines read by a thread."""

    def __init__(self, bs: BenchServer, dbname: str, client_name: str, log_path: Path) -> None:
        if not CLIENT.exists():
            raise RuntimeError(f"{CLIENT} is missing: run `make setup` (it builds it)")
        self._log: IO[str] = log_path.open("w")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [str(CLIENT), "watch", "--table", "health_events", "--client-name", client_name],
            env=service_env(bs, dbname),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.ready = threading.Event()
        self.seen: list[tuple[int, int]] = []
        self.stopped: dict[str, Any] | None = None
        self.last_line_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            self.last_line_at = time.monotonic()
            if line.get("ready"):
                self.ready.set()
            elif "change_id" in line:
                self.seen.append((int(line["change_id"]), int(line["received_ns"])))
            elif line.get("stopped"):
                self.stopped = line

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.ready.wait(timeout):
            self.close()
            raise RuntimeError(
                f"NVSentinel's watcher did not start within {timeout:g} s; see {self.log_path}"
            )

    def close(self) -> None:
        """Close stdin (its way to stop), wait for the last line and the exit."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        self._log.close()
        if self.stopped is not None and self.stopped.get("error"):
            raise RuntimeError(f"NVSentinel's watcher failed: {self.stopped['error']}")


_RUNS = itertools.count(1)


def _max_change_id(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM datastore_changelog").fetchone()
    return int(row[0]) if row else 0


def _truth(conninfo: str, after_id: int) -> dict[int, tuple[str, str]]:
    """Every health_events change after ``after_id``: id -> (row id, operation)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, record_id::text, operation FROM datastore_changelog "
            "WHERE table_name = 'health_events' AND id > %s",
            (after_id,),
        ).fetchall()
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _judge(
    reader: str,
    seen: list[tuple[int, int]],
    truth: dict[int, tuple[str, str]],
    commits: dict[str, int],
) -> ReaderResult:
    first: dict[int, int] = {}
    for change_id, at in seen:
        first.setdefault(change_id, at)
    latencies = [
        (first[cid] - commits[record]) / 1e6
        for cid, (record, operation) in truth.items()
        if operation == "INSERT" and record in commits and cid in first
    ]
    return ReaderResult(
        reader=reader,
        delivered=len(first.keys() & truth.keys()),
        lost=len(truth.keys() - first.keys()),
        duplicates=len(seen) - len(first),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies) if latencies else float("nan"),
    )


def _wait_quiet(watcher: NvsentinelWatcher, expected: int) -> None:
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline and watcher.proc.poll() is None:
        if len({cid for cid, _ in watcher.seen}) >= expected:
            return
        if time.monotonic() - watcher.last_line_at >= QUIET_S:
            return
        time.sleep(0.1)


def _start_writers(
    group: Workers, conninfo: str, tag: str, rate: float, plan: Plan
) -> tuple[int, float]:
    """The paced writers; returns their number and the transactions/s they are paced at.

    ``rate`` counts changes: a transaction makes one, or two when it also
    updates a shared event.
    """
    writers_n = plan.side_writers
    tx_rate = rate / (1 + plan.side_update_share)
    per_writer = max(1, round(tx_rate * plan.side_seconds / writers_n))
    for number in range(writers_n):
        group.start(
            f"paced-writer-{number}",
            workers.paced_writer,
            conninfo,
            tag,
            number,
            writers_n,
            tx_rate,
            per_writer,
            plan.side_hold_ms,
            plan.side_update_share,
            SHARED_IDS,
            group.ready,
            group.go,
            group.results,
        )
    return writers_n, tx_rate


def _start_readers(group: Workers, conninfo: str, db: str, start_id: int, alone: bool) -> int:
    """Our stream, and unless ``alone`` the naive poller; returns how many were started."""
    group.start(
        "change-stream",
        workers.stream_consumer,
        conninfo,
        db,
        QUIET_S,
        group.ready,
        group.go,
        group.stop,
        group.results,
    )
    if alone:
        return 1
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
    return 2


def _run_at(
    bs: BenchServer, db: str, rate: float, plan: Plan, log_dir: Path, alone: bool
) -> SideBySideResult:
    """One run at ``rate``: the three readers, or (``alone``) our stream by itself."""
    conninfo = bs.conninfo(db)
    tag = f"side{next(_RUNS)}"
    meter = bs.cpu_meter()
    watcher = None
    if not alone:
        watcher = NvsentinelWatcher(bs, db, f"bench-{tag}", log_dir / f"watch-{tag}.log")
    try:
        if watcher is not None:
            watcher.wait_ready()
        with Workers() as group:
            # The writers connect and write a warm-up event first; the run's
            # changes are those after it, and our readers start after it.
            writers_n, tx_rate = _start_writers(group, conninfo, tag, rate, plan)
            group.wait_ready(writers_n)
            start_id = _max_change_id(conninfo)
            readers_n = _start_readers(group, conninfo, db, start_id, alone)
            group.wait_ready(readers_n)
            group.go.set()
            answers = group.collect(writers_n, timeout=plan.side_seconds + 120)
            truth = _truth(conninfo, start_id)
            group.stop.set()
            answers += group.collect(readers_n, timeout=CATCH_UP_S + 60)
            if watcher is not None:
                _wait_quiet(watcher, len(truth))
    finally:
        if watcher is not None:
            watcher.close()
    commits: dict[str, int] = {}
    late = 0
    first = float("inf")
    for kind, payload in answers:
        if kind == "writer":
            commits.update(dict(payload["commits"]))
            late += int(payload["late"])
            first = min(first, float(payload["start"]))
    by_kind = {kind: payload for kind, payload in answers if kind != "writer"}
    seen = {k: [(int(a), int(b)) for a, b in v["seen"]] for k, v in by_kind.items()}
    if watcher is not None:
        seen["nvsentinel"] = watcher.seen
    readers = {name: _judge(name, seen[name], truth, commits) for name in READERS if name in seen}
    last_commit = max(commits.values()) / 1e9
    return SideBySideResult(
        offered=rate,
        tx_rate=tx_rate,
        achieved=len(commits) / (last_commit - first),
        writers=writers_n,
        transactions=len(commits),
        changes=len(truth),
        late_sends=late,
        out_of_version_order=int(by_kind["stream"]["out_of_order"]),
        readers=readers,
        other_cpu=meter.others_cores(),
    )


def _log_run(log: Progress, run: SideBySideResult, label: str) -> None:
    for r in run.readers.values():
        log(
            f"  {run.offered:,.0f}/s {label}{READER_NAMES[r.reader]}: lost {r.lost:,} of "
            f"{run.changes:,}, duplicates {r.duplicates:,}, p50 {r.p50_ms:.1f} ms, "
            f"p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms"
        )


def measure_side_by_side(
    bs: BenchServer, plan: Plan, log: Progress, log_dir: Path
) -> tuple[list[SideBySideResult], list[SideBySideResult]]:
    """At each of ``plan.side_rates``: the three readers together, then our stream alone.

    Alone, on the same writers: NVSentinel's watcher takes a good part of 2
    cores at 1,000 changes/s (a ``MarkProcessed`` statement per event), and
    the alone run shows our stream's own latency without that neighbour.
    """
    db = bs.create_database("bench_side_by_side")
    prefill(bs.conninfo(db), SHARED_IDS)
    bs.analyze(db)
    together: list[SideBySideResult] = []
    alone: list[SideBySideResult] = []
    for rate in plan.side_rates:
        log(
            f"side by side: {plan.side_writers} writers, {rate:,.0f} changes/s for "
            f"{plan.side_seconds:g} s; NVSentinel's watcher, our stream, the naive poller"
        )
        together.append(_run_at(bs, db, rate, plan, log_dir, alone=False))
        _log_run(log, together[-1], "")
        log(f"side by side: the same writers, {rate:,.0f} changes/s, our stream alone")
        alone.append(_run_at(bs, db, rate, plan, log_dir, alone=True))
        _log_run(log, alone[-1], "alone: ")
    bs.server.drop_database(db)
    return together, alone


# -- idle cost ------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    reader: str
    notifications: bool
    statements_per_s: float


def _commits(bs: BenchServer, db: str) -> int:
    with psycopg.connect(bs.server.superuser_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()
    return int(row[0]) if row else 0


def _statements_per_s(bs: BenchServer, db: str, seconds: float) -> float:
    """Transactions the server ran in ``db`` per second (autocommit: one per statement).

    The cumulative statistics are flushed by each backend at most once a
    second, so the window is long and read after a pause.
    """
    time.sleep(1.5)
    before = _commits(bs, db)
    time.sleep(seconds)
    time.sleep(1.5)
    after = _commits(bs, db)
    # Each of the two readings is a transaction of the superuser's session on
    # another database, so it is not counted here.
    return (after - before) / (seconds + 1.5)


def _idle_nvsentinel(bs: BenchServer, db: str, seconds: float, log_dir: Path) -> float:
    watcher = NvsentinelWatcher(bs, db, "bench-idle", log_dir / "nvsentinel-watch-idle.log")
    try:
        watcher.wait_ready()
        return _statements_per_s(bs, db, seconds)
    finally:
        watcher.close()


def _idle_stream(bs: BenchServer, db: str, seconds: float) -> float:
    with PostgresStore(bs.conninfo(db), db, StoreOptions(min_pool_size=1, max_pool_size=1)) as s:
        stream = s.collection("health_events").watch()
        # As a service waits: blocked in the iterator until an event comes
        # (close() from here ends the wait).
        thread = threading.Thread(target=lambda: stream.try_next(timeout=None), daemon=True)
        thread.start()
        try:
            return _statements_per_s(bs, db, seconds)
        finally:
            stream.close()
            thread.join()


def measure_idle(bs: BenchServer, plan: Plan, log: Progress, log_dir: Path) -> list[IdleResult]:
    """Statements/s an idle reader costs, notifications on and off, less the idle database's."""
    db = bs.create_database("bench_idle")
    results: list[IdleResult] = []
    for notifications in (True, False):
        bs.set_notify_changes(db, notifications)
        baseline = _statements_per_s(bs, db, plan.idle_seconds)
        costs = {
            "nvsentinel": _idle_nvsentinel(bs, db, plan.idle_seconds, log_dir),
            "stream": _idle_stream(bs, db, plan.idle_seconds),
        }
        for reader, total in costs.items():
            result = IdleResult(reader, notifications, max(0.0, total - baseline))
            results.append(result)
            log(
                f"idle {READER_NAMES[reader]}, notifications {'on' if notifications else 'off'}: "
                f"{result.statements_per_s:.1f} statements/s"
            )
    bs.server.drop_database(db)
    return results
