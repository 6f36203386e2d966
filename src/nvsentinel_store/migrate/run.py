"""The run: every source read, checked, batched and imported, then verified on request.

Reading and writing overlap: this thread reads and parses the next batch (or
a parser process does, for big files) while a writer thread imports the one
before; the connection is only ever used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Final

import psycopg

from nvsentinel_store.errors import ConfigError, ImportFailedError, StoreUnavailableError
from nvsentinel_store.migrate.batches import Batch, Pending, batches
from nvsentinel_store.migrate.importer import Conn, Importer, WriteResult, check_target, count_rows
from nvsentinel_store.migrate.options import MigrateOptions
from nvsentinel_store.migrate.parser import file_batches_in_child
from nvsentinel_store.migrate.results import (
    CollectionSummary,
    Conflict,
    ConflictCallback,
    MigrationReport,
    Progress,
    ProgressCallback,
    Reject,
    RejectCallback,
)
from nvsentinel_store.migrate.sampler import Sampler
from nvsentinel_store.migrate.sources import Source
from nvsentinel_store.migrate.verify import verify
from nvsentinel_store.store import COLLECTIONS
from nvsentinel_store.text import first_line


def migrate(
    conn: Conn,
    sources: Iterable[Source],
    options: MigrateOptions | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    on_reject: RejectCallback | None = None,
    on_conflict: ConflictCallback | None = None,
) -> MigrationReport:
    """Import every source into its table; verify afterwards when ``options.verify``.

    ``conn`` is a non-autocommit connection to the target database (the
    tables' owner unless ``options.capture_changes``). With
    ``options.dry_run`` every document is read and checked and the target is
    only read (which ids it already holds), never written.
    """
    options = options or MigrateOptions()
    if options.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {options.batch_size}")
    if conn.autocommit:
        raise ConfigError("migrate needs a connection with autocommit off")
    source_list = list(sources)
    collections = [c for c in COLLECTIONS if any(s.collection == c for s in source_list)]
    check_target(conn, collections, need_owner=not options.capture_changes and not options.dry_run)
    started = time.monotonic()
    report = MigrationReport(
        dry_run=options.dry_run,
        capture_changes=options.capture_changes,
        summaries={c: CollectionSummary(c) for c in collections},
    )
    seen_ids: dict[str, set[str]] = {c: set() for c in collections}
    samplers = {c: Sampler(options.sample_size) for c in collections}
    counters: dict[str, Callable[[], int]] = {}
    with (
        _short_gil_slices(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="migrate-writer") as executor,
    ):
        for collection in collections:
            mine = [s for s in source_list if s.collection == collection]
            for source in mine:
                if source.count is not None:
                    counters[collection] = source.count
            run = _CollectionRun(
                conn,
                collection,
                options,
                report.summaries[collection],
                seen_ids[collection],
                samplers[collection],
                on_progress,
                on_reject,
                executor,
                on_conflict,
            )
            try:
                for source in mine:
                    run.read(source)
                run.finish()
            finally:
                run.abandon()
    for collection in collections:
        report.summaries[collection].target_count = count_rows(conn, collection)
    if options.verify:
        report.verify = {
            c: verify(conn, report.summaries[c], seen_ids[c], samplers[c], counters.get(c))
            for c in collections
        }
    report.elapsed = time.monotonic() - started
    return report


#: The interpreter's thread switch interval while importing (default 5 ms).
SWITCH_INTERVAL_S: Final = 0.0005


@contextlib.contextmanager
def _short_gil_slices() -> Iterator[None]:
    """Shorter GIL slices while the writer thread runs.

    The reading thread parses without pause; with the default 5 ms slices the
    writer thread, which needs the GIL for a moment after each network wait
    (COPY chunks, statement results), waits up to 5 ms each time and the
    server idles meanwhile. 0.5 ms slices took the import from about 14,000 to
    about 20,000 documents/s on the benchmark machine. Restored afterwards.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class _CollectionRun:
    """Reading, checking and batching of one collection's sources."""

    def __init__(
        self,
        conn: Conn,
        collection: str,
        options: MigrateOptions,
        summary: CollectionSummary,
        seen_ids: set[str],
        sampler: Sampler,
        on_progress: ProgressCallback | None,
        on_reject: RejectCallback | None,
        executor: ThreadPoolExecutor,
        on_conflict: ConflictCallback | None = None,
    ) -> None:
        self.importer = Importer(conn, collection, options)
        self.executor = executor
        self.in_flight: tuple[list[Pending], Future[WriteResult]] | None = None
        self.collection = collection
        self.options = options
        self.summary = summary
        self.seen_ids = seen_ids
        self.sampler = sampler
        self.on_progress = on_progress
        self.on_reject = on_reject
        self.on_conflict = on_conflict
        self.started = time.monotonic()
        self.last_report = 0.0
        self.source_name = ""

    def read(self, source: Source) -> None:
        self.source_name = source.name
        for batch in self._batches_of(source):
            self.summary.read += batch.read
            for where, reason, raw, doc_id in batch.rejects:
                self.reject(where, reason, raw, doc_id)
            if batch.pendings:
                self.flush(batch)
            else:
                self.progress()

    def _batches_of(self, source: Source) -> Iterator[Batch]:
        """The source's batches, parsed by a child process when it is a big file."""
        options = self.options
        payload = not options.dry_run
        if self._parse_in_child(source):
            assert source.path is not None
            return file_batches_in_child(source.path, self.collection, options.batch_size, payload)
        return batches(source.records(), self.collection, options.batch_size, payload)

    def _parse_in_child(self, source: Source) -> bool:
        threshold = self.options.subprocess_min_bytes
        if source.path is None or threshold is None:
            return False
        try:
            size = source.path.stat().st_size
        except OSError as err:
            raise ImportFailedError(f"{source.path}: cannot read the file: {err}") from err
        return size >= threshold

    def reject(self, where: str, reason: str, raw: str, doc_id: str | None = None) -> None:
        self.summary.rejected += 1
        if self.on_reject is not None:
            self.on_reject(Reject(self.collection, where, reason, raw, doc_id))

    def flush(self, batch: Batch) -> None:
        """Hand the batch to the writer thread (after settling the one before).

        Reading and parsing the next batch overlaps with the database's work
        on this one; the connection is only ever used by one thread at a time.
        """
        self.settle()
        future = self.executor.submit(self.importer.write, batch.pendings, batch.payload)
        self.in_flight = (batch.pendings, future)

    def settle(self) -> None:
        """Wait for the batch in flight and count its documents."""
        if self.in_flight is None:
            return
        batch, future = self.in_flight
        self.in_flight = None
        try:
            inserted, refused, differ_at = future.result()
        except psycopg.OperationalError as err:
            raise StoreUnavailableError(
                f"{self.collection}: the connection to the target was lost during a batch "
                f"(nothing of that batch was stored; run again to continue): {first_line(err)}"
            ) from err
        dry_run = self.options.dry_run
        refused_at = {id(p): reason for p, reason in refused}
        # Documents not inserted (or, in a dry run, all): already stored, or a
        # maintenance event whose eventId another stored document holds.
        candidates = [
            p for p in batch if dry_run or (p.id not in inserted and id(p) not in refused_at)
        ]
        if differ_at is None:
            state = self.importer.stored(candidates)
            present = {candidates[i].id for i in state}
            differ = {id(candidates[i]) for i, same in state.items() if not same}
        else:
            present = self.importer.present([p.id for p in candidates])
            differ = {id(batch[i]) for i in differ_at}
        owners = self.importer.event_id_owners(
            [p.event_id for p in candidates if p.event_id is not None]
        )
        counted: set[str] = set()
        for pending in batch:
            reason = refused_at.get(id(pending))
            if reason is not None:
                self.reject(pending.where, reason, pending.raw, pending.id)
                continue
            if id(pending) in differ:
                # Stored under this _id with other content: the stored copy is kept.
                self.summary.already_present += 1
                conflict = Conflict(self.collection, pending.id, pending.where)
                self.summary.conflicts.append(conflict)
                if self.on_conflict is not None:
                    self.on_conflict(conflict)
                counted.add(pending.id)
                self.seen_ids.add(pending.id)
                if not self.options.keep_existing:
                    self.sampler.offer(pending.id, pending.text)
                continue
            if pending.id in self.seen_ids or pending.id in counted:
                self.summary.already_present += 1
                continue
            holder = owners.get(pending.event_id or "") if owners else None
            if pending.id in present:
                self.summary.already_present += 1
            elif (dry_run and (holder is None or holder == pending.id)) or (
                not dry_run and pending.id in inserted
            ):
                self.summary.imported += 1
            else:
                self.reject(
                    pending.where,
                    f"eventId {pending.event_id} is already stored under _id {holder}"
                    if holder is not None
                    else "not stored: conflicts with a stored document",
                    pending.raw,
                    pending.id,
                )
                continue
            counted.add(pending.id)
            self.seen_ids.add(pending.id)
            self.sampler.offer(pending.id, pending.text)
        self.progress()

    def progress(self, done: bool = False) -> None:
        self.last_report = time.monotonic()
        if self.on_progress is None:
            return
        s = self.summary
        self.on_progress(
            Progress(
                self.collection,
                self.source_name,
                s.read,
                s.imported,
                s.already_present,
                s.rejected,
                self.last_report - self.started,
                done,
            )
        )

    def abandon(self) -> None:
        """After an error: wait for the batch in flight (it commits or rolls back whole)."""
        if self.in_flight is not None:
            _, future = self.in_flight
            self.in_flight = None
            wait([future])

    def finish(self) -> None:
        self.settle()
        self.progress(done=True)
