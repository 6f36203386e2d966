"""While NVSentinel's own watcher runs, our stream on the same database loses nothing.

``.bin/nvsentinel-client-check watch`` (tests/nvsentinel_client) runs
NVSentinel's Go HYBRID watcher on ``health_events`` as a service does: LISTEN
on ``nvsentinel_changes`` plus its fallback poll, and ``MarkProcessed`` after
every event, which runs ``UPDATE datastore_changelog SET processed`` and saves
its ``resume_tokens`` row. It connects as the services' role with its client
certificate over ``verify-full``. Alongside it, our Python change stream reads
the same table while the out-of-order writers of
``test_changestream_concurrency`` run (their commits land out of id order).

Ours must deliver every committed change exactly once, per document in version
order, at the positions the rows still have after NVSentinel's updates.
NVSentinel's watcher must work (deliver the warm-up writes, made one at a time
after it was listening; deliver during the writers; stop cleanly); how many of
the writers' changes it lost or delivered twice is printed, not judged: its
``(changed_at, id)`` cursor is not lossless under out-of-order commits, which
is why our stream keeps its own positions.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

from devsupport.postgres import PostgresDatabase
from nvsentinel_store.providers.postgresql.positions import Position
from nvsentinel_store.providers.postgresql.provider import PostgresStore
from nvsentinel_store.store import ChangeEvent, WatchOptions
from tests.datastore.test_changestream_concurrency import (
    DOCUMENT_ID,
    SHARED_DOCUMENTS,
    TRANSACTIONS_PER_WRITER,
    WRITERS,
    drain,
    writer,
)
from tests.datastore.test_nvsentinel_client import BINARY, MISSING_BINARY, service_env

pytestmark = pytest.mark.datastore

#: The provider start (schema wait) and the LISTEN session coming up.
READY_TIMEOUT_S = 60.0
#: NOTIFY delivers in milliseconds; this bounds the warm-up's delivery.
WARMUP_TIMEOUT_S = 15.0
#: NVSentinel's watcher has drained once it printed nothing for this long.
QUIET_S = 3.0
DRAIN_TIMEOUT_S = 120.0
#: The watcher's own bound, should the test die without closing its stdin.
WATCH_LIMIT_S = 900

CHANGELOG_SQL = (
    "SELECT id, " + DOCUMENT_ID + ", version, position_txid::text, processed "
    "FROM datastore_changelog WHERE table_name = 'health_events' ORDER BY id"
)


class GoWatcher:
    """The ``watch`` subprocess and the lines it printed, read by a thread as they come."""

    def __init__(self, database: PostgresDatabase, client_name: str, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.started_at = time.monotonic()
        self._stderr: IO[str] = stderr_path.open("w")
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                "watch",
                "--table",
                "health_events",
                "--client-name",
                client_name,
                "--seconds",
                str(WATCH_LIMIT_S),
            ],
            env=service_env(database),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.stray: list[str] = []
        self.last_line_at = time.monotonic()
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                try:
                    self.lines.append(json.loads(raw))
                except ValueError:
                    self.stray.append(raw.rstrip("\n"))
                self.last_line_at = time.monotonic()
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self._changed:
            return [line for line in self.lines if "change_id" in line]

    def change_ids(self) -> list[int]:
        return [int(event["change_id"]) for event in self.events()]

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` (checked after each line) or the output ends or time is up."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return done()
                self._changed.wait(min(remaining, 0.2))
        return True

    def wait_ready(self) -> None:
        if not self.wait_for(
            lambda: any(line.get("ready") for line in self.lines), READY_TIMEOUT_S
        ):
            pytest.fail(
                f"`{BINARY.name} watch` was not ready within {READY_TIMEOUT_S}s "
                f"(exit {self.proc.poll()}): {self.describe()}",
                pytrace=False,
            )

    def wait_quiet(self) -> float:
        """Wait until nothing was printed for :data:`QUIET_S`; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < DRAIN_TIMEOUT_S and self.proc.poll() is None:
            idle = time.monotonic() - self.last_line_at
            if idle >= QUIET_S:
                break
            time.sleep(QUIET_S - idle)
        return time.monotonic() - started

    def stop(self) -> int:
        """Close stdin (the way to stop it), wait for it to exit; the exit status."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        self._stderr.close()

    def describe(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace").splitlines()
        return (
            f"last lines {self.lines[-3:]}, stray stdout {self.stray[:5]}, "
            "stderr:\n" + "\n".join(stderr[-30:])
        )


@pytest.fixture
def go_watcher(schema_database: PostgresDatabase, tmp_path: Path) -> Iterator[GoWatcher]:
    if not BINARY.exists():
        pytest.fail(MISSING_BINARY, pytrace=False)
    watcher = GoWatcher(schema_database, f"alongside-{uuid.uuid4().hex[:8]}", tmp_path / "stderr")
    try:
        yield watcher
    finally:
        watcher.kill()


def per_document_versions(pairs: list[tuple[str, int]]) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = defaultdict(list)
    for document_id, version in pairs:
        versions[document_id].append(version)
    return versions


def test_our_stream_delivers_every_change_once_while_nvsentinels_watcher_runs(
    schema_database: PostgresDatabase, store: PostgresStore, go_watcher: GoWatcher
) -> None:
    timings: dict[str, float] = {}
    clock = go_watcher.started_at

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 2)
        clock = now

    go_watcher.wait_ready()
    client_name = go_watcher.lines[0]["client_name"]
    lap("nvsentinel watcher ready")

    events = store.collection("health_events")
    stream = events.watch(options=WatchOptions(batch_size=50, poll_interval=0.01))
    delivered: list[ChangeEvent] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    consumer = threading.Thread(target=drain, args=(stream, delivered, stop))
    consumer.start()
    conninfo = schema_database.conninfo()
    try:
        # Warm-up: one write at a time, nothing concurrent, after NVSentinel's
        # watcher is listening; these are the documents the writers update.
        shared = [
            events.insert_one({"healthevent": {"nodename": f"shared-{n}"}})
            for n in range(SHARED_DOCUMENTS)
        ]
        with psycopg.connect(conninfo) as conn:
            warmup = {int(row[0]) for row in conn.execute(CHANGELOG_SQL).fetchall()}
        go_watcher.wait_for(lambda: warmup <= set(go_watcher.change_ids()), WARMUP_TIMEOUT_S)
        lap("warm-up delivered")

        before_writers = len(go_watcher.events())
        writers = [
            threading.Thread(target=writer, args=(conninfo, n, shared, failures))
            for n in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(timeout=300)
        during_writers = len(go_watcher.events()) - before_writers
        lap("writers")
    finally:
        stop.set()
        consumer.join(timeout=60)
        stream.close()
    lap("our stream drained")
    timings["nvsentinel watcher drained"] = round(go_watcher.wait_quiet(), 2)
    clock = time.monotonic()
    alive_until_stopped = go_watcher.proc.poll() is None
    exit_code = go_watcher.stop()
    lap("nvsentinel watcher stopped")
    assert not failures

    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(CHANGELOG_SQL).fetchall()
        token_row = conn.execute(
            "SELECT resume_token ->> 'eventID' FROM resume_tokens WHERE client_name = %s",
            (client_name,),
        ).fetchone()

    # NVSentinel's watcher: counted, and required to work, not to be lossless.
    theirs = Counter(go_watcher.change_ids())
    writes = {int(row[0]) for row in rows} - warmup
    lost = sorted(writes - set(theirs))
    twice = {change: n for change, n in theirs.items() if n > 1 and change in writes}
    by_change = {int(row[0]): (str(row[1]), int(row[2])) for row in rows}
    their_order = per_document_versions(
        [by_change[c] for c in dict.fromkeys(theirs) if c in writes]
    )
    their_disorder = sum(1 for v in their_order.values() if v != sorted(v))
    processed = sum(1 for row in rows if row[4])
    summary = (
        f"NVSentinel's HYBRID watcher: {sum(theirs.values())} deliveries ({during_writers} while "
        f"the writers ran); of the writers' {len(writes)} changes it lost {len(lost)} and "
        f"delivered {len(twice)} more than once ({sum(twice.values()) - len(twice)} extra "
        f"deliveries); {their_disorder} documents out of version order; "
        f"MarkProcessed flagged {processed} of {len(rows)} rows processed. "
        f"Our stream: {len(delivered)} events. Timings (s): {timings}"
    )
    print(summary)

    # -- Ours: every committed change exactly once, in per-document version order.
    expected = Counter((str(row[1]), int(row[2])) for row in rows)
    got = Counter((e["documentKey"]["_id"], e["documentVersion"]) for e in delivered)
    assert sum(expected.values()) > WRITERS * TRANSACTIONS_PER_WRITER
    assert got == expected, summary
    # At the positions the rows have now, after NVSentinel's UPDATEs of processed.
    positions = Counter(Position.from_token(e["_id"]) for e in delivered)
    assert positions == Counter(Position(int(row[3]), int(row[0])) for row in rows), summary
    ours = per_document_versions(
        [(e["documentKey"]["_id"], e["documentVersion"]) for e in delivered]
    )
    assert {doc: v for doc, v in ours.items() if v != sorted(v)} == {}, summary
    for doc in shared:
        assert ours[doc] == list(range(1, len(ours[doc]) + 1)), summary

    # -- NVSentinel's watcher worked: ran throughout, stopped cleanly, marked processed.
    assert exit_code == 0 and alive_until_stopped, f"watcher: {go_watcher.describe()}"
    assert not go_watcher.stray, go_watcher.describe()
    stopped = {"stopped": True, "delivered": sum(theirs.values()), "reason": "stdin closed"}
    assert go_watcher.lines[-1] == stopped, go_watcher.describe()
    assert warmup <= set(theirs), (
        f"NVSentinel's watcher missed warm-up changes {sorted(warmup - set(theirs))}: {summary}"
    )
    assert during_writers > 0, (
        f"NVSentinel's watcher delivered nothing during the writers: {summary}"
    )
    assert token_row is not None and int(token_row[0]) == max(theirs), (
        f"its MarkProcessed saved {token_row}, not the last change {max(theirs)}: {summary}"
    )
    assert processed > 0, summary
