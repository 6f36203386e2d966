"""MongoDB-style change streams on PostgreSQL: triggers, a changelog, polling, resume tokens.

How a change gets to a consumer
===============================

NVSentinel's change log trigger ``log_table_changes`` (migration 0001) adds one
``datastore_changelog`` row per changed document inside the writing
transaction, with a ``BIGSERIAL`` ``id``, the table name and the old and new
rows as JSON. Migration 0002 adds ``position_txid`` to that row: the writing
transaction's id ``pg_current_xact_id()`` (``xid8``: 64 bits, never wraps),
raised to the previous ``position_txid`` of the same document when that is
higher (see below). A stream keeps a cursor ``(position_txid, id)`` and polls::

    SELECT ... FROM datastore_changelog
     WHERE table_name = $c AND (position_txid, id) > $cursor
       AND position_txid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY position_txid, id LIMIT $batch

Why this never skips a committed change
---------------------------------------

Neither ``id`` nor a timestamp is a safe cursor on its own: both are taken
while a transaction runs, and transactions commit in another order. With 8
writers a poller that reads ``id > last`` sees id 11 (committed) while id 10
is still uncommitted and invisible, moves past 10, and never sees it.

The horizon ``x = pg_snapshot_xmin(S)`` of the poll statement's snapshot ``S``
is the oldest transaction id still running when ``S`` was taken (or the next id
to be assigned when none runs). Four facts make the cursor sound:

1. Every transaction with an id below ``x`` has ended when ``S`` is taken, so
   its rows are visible in ``S`` (committed) or never will be (aborted).
2. A transaction running at or after ``S`` has an id ``>= x`` and writes rows
   with ``position_txid >= `` its id ``>= x``. So no row with
   ``position_txid < x`` can appear after ``S``: that part of the history is
   final, and every row in it is visible in ``S``.
3. The poll reads, in ``S`` itself (one statement: ``pg_current_snapshot()``
   is the snapshot the statement's scan uses), the rows below ``x`` after the
   cursor, in ``(position_txid, id)`` order. Paging through a final set in a
   total order misses nothing and repeats nothing.
4. The horizon never moves backwards: a transaction still running at a later
   snapshot had its id before and was running at the earlier snapshot too.

When a poll returns fewer rows than the batch size, every row below ``x`` has
been seen, and the cursor moves to ``(x, 0)`` (ids start at 1); this also
skips rows the SQL filter left out, so they are not read again. The poller
never holds the horizon back itself: it polls in autocommit mode with
read-only statements (which get no transaction id) and stores tokens in
separate short transactions.

Why ``position_txid`` and not ``txid``: per document, changes must arrive in
version order. Updates of one row are serialised by its row lock, but a
transaction can get its id (at its first write) before it waits for that lock
behind a transaction with a higher id; ordering by ``txid`` would then put
version 3 before version 2. The BEFORE trigger reads the previous version's
``position_txid`` under the row lock and takes the greater of it and its own
id, so positions rise with versions (equal ``position_txid``: the later
change has the higher ``id``, drawn after the earlier one committed). Fact 2
still holds because ``position_txid >= txid``.

Consequences: a change is delivered once its transaction and every transaction
that got its id earlier have ended (a long-running writing transaction anywhere
in the cluster delays delivery, never loses it); each document's changes
arrive in version order; each change once per stream.

Resume tokens and history
=========================

An event's ``_id`` is its position and the store's epoch
``{"_data": hex(position_txid) + hex(id) + hex(epoch)}`` (48 lower-case hex
digits, 16 each; tokens of one epoch order like positions). ``resume_token`` is the
position after the last event returned (or past the changes filtered out). A
consumer stores it under its ``client_name`` in ``datastore_consumer_positions``
(NVSentinel's ``resume_tokens`` belongs to NVSentinel's own watchers);
``datastore_changelog_prune`` deletes only changes at or below every live
consumer's position and records, per collection, the highest position it
deleted (``datastore_changelog_pruned``, raised by every deletion, NVSentinel's
``cleanup_changelog`` included). A stream whose position is below that
frontier raises :class:`~nvsentinel_store.errors.HistoryLostError` -- at open
and at every poll (the frontier is read in the same snapshot as the rows) --
and never skips ahead on its own. ``from_beginning`` starts at the frontier.

Starting "now" means at ``(horizon, 0)``: every change committed after the
stream opened is delivered, and so may be a few committed just before (those
whose ids are above a transaction that was still running).

Backup and restore: positions are transaction ids of the server that wrote
them, and a server restored from ``pg_dump`` counts its own. Table
``datastore_epoch`` (migration 0004) names the server the positions belong to
(``system_identifier``) and a random epoch. On every new connection a stream
checks that it runs on that server; on another (a restore that was not
adopted yet) it raises :class:`~nvsentinel_store.errors.HistoryLostError`
instead of misreading positions. ``datastore_adopt_restore()`` rebases the
stored positions (a consumer resumes before the first change it had not
passed: it may see a change again, never miss one) and draws a new epoch, so
a token handed out before the restore is refused, never misread.

Wake-up: notifications as a hint, polling for correctness
========================================================

A stream listens on NVSentinel's channel ``nvsentinel_changes`` on its own
connection. NVSentinel's trigger sends one notification per change at commit
(payload ``{"id", "table", "operation"}``), so an idle stream is woken as soon
as a change of its collection commits and polls at once. The notification
only says "poll now": what is delivered is still read by position, so a
notification that is lost, late, or never sent (an operator turned them off:
``nvsentinel.notify_changes = off``) delays a change, never loses it.

A stream polls again at once while polls return rows; after an empty poll it
waits ``min_poll_interval``, doubling up to ``poll_interval`` while the polls
stay empty (an idle stream costs ``1 / poll_interval`` polls per second). The
wait ends early at a notification for its collection, at a write made through
the same store object (:class:`Wakeup`; this covers a process's own writes
with notifications off), or when the stream is closed. The poll after a
notification may still find the change held back by an older transaction
that has not ended (see above), and that transaction may send no
notification of its own (a prune batch, another service's ``MarkProcessed``):
after a wake-up the backoff restarts at ``min_poll_interval``, so the next
polls come soon.

Connection loss: the stream reconnects with exponential backoff (up to
``reconnect_max_delay``) and continues from its cursor, so a server restart is
invisible to the consumer apart from the delay.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql

from nvsentinel_store.errors import HistoryLostError, QueryError, StoreUnavailableError
from nvsentinel_store.providers.postgresql.change_events import (
    build_event,
    event_matches,
    parse_pipeline,
)
from nvsentinel_store.providers.postgresql.positions import (
    START,
    Position,
    decode_token,
    load_token,
    read_epoch,
    save_token,
)
from nvsentinel_store.providers.postgresql.query import pushdown
from nvsentinel_store.providers.postgresql.wakeup import (
    NOTIFY_CHANNEL,
    Doorbell,
    Wakeup,
    notifies_collection,
)
from nvsentinel_store.query import (
    MATCH_ALL,
)
from nvsentinel_store.store import (
    ChangeEvent,
    ClosingContext,
    Pipeline,
    ResumeToken,
    WatchOptions,
)

#: How long storing a token keeps retrying through a connection loss.
TOKEN_SAVE_TIMEOUT: Final = 30.0

Connect = Callable[[], psycopg.Connection[Any]]
T = TypeVar("T")


_POLL_SQL: Final = """
WITH h AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,
           (SELECT p.position_txid FROM datastore_changelog_pruned AS p
             WHERE p.collection = %(coll)s)
               AS pruned_txid,
           (SELECT p.id FROM datastore_changelog_pruned AS p WHERE p.collection = %(coll)s)
               AS pruned_id
)
SELECT h.horizon::text, h.pruned_txid::text, h.pruned_id,
       c.id, c.position_txid::text, c.operation, c.document_id, c.version, c.document,
       c.document_before, c.changed_at
  FROM h
  LEFT JOIN LATERAL (
      SELECT *
        FROM (SELECT l.id, l.position_txid,
                     CASE l.operation WHEN 'INSERT' THEN 'insert' WHEN 'DELETE' THEN 'delete'
                          WHEN 'UPDATE' THEN CASE WHEN l.replaced THEN 'replace' ELSE 'update' END
                     END AS operation,
                     coalesce(nvsentinel_json_text(
                                  coalesce(l.new_values, l.old_values) -> 'document' -> '_id'),
                              l.record_id::text) AS document_id,
                     coalesce(l.version, 0) AS version,
                     jsonb_build_object('_id', l.record_id::text) || (l.new_values -> 'document')
                         AS document,
                     jsonb_build_object('_id', l.record_id::text) || (l.old_values -> 'document')
                         AS document_before,
                     l.changed_at
                FROM datastore_changelog AS l
               WHERE l.table_name = %(coll)s
                 AND (l.position_txid, l.id) > (%(txid)s::xid8, %(cid)s::bigint)
                 AND l.position_txid < h.horizon) AS c
       WHERE {pushdown}
       ORDER BY c.position_txid, c.id
       LIMIT %(limit)s
  ) AS c ON true
"""

_FRONTIER_SQL: Final = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
       (SELECT p.position_txid::text FROM datastore_changelog_pruned AS p
         WHERE p.collection = %(coll)s),
       (SELECT p.id FROM datastore_changelog_pruned AS p WHERE p.collection = %(coll)s)
"""


class PostgresChangeStream(ClosingContext):
    """A change stream on one collection (see the module docstring)."""

    def __init__(
        self,
        connect: Connect,
        database: str,
        collection: str,
        pipeline: Pipeline | None = None,
        *,
        client_name: str | None = None,
        resume_after: ResumeToken | None = None,
        from_beginning: bool = False,
        options: WatchOptions | None = None,
        wakeup: Wakeup | None = None,
    ) -> None:
        self._connect = connect
        self._database = database
        self._collection = collection
        self._client_name = client_name
        self._options = options or WatchOptions()
        if self._options.batch_size < 1:
            raise QueryError("batch_size must be at least 1")
        self._wakeup = wakeup
        self._observer = self._options.observer
        self._filter = parse_pipeline(pipeline)
        self._query = sql.SQL(_POLL_SQL).format(pushdown=pushdown(self._filter))
        self._conn: psycopg.Connection[Any] | None = None
        self._buffer: deque[tuple[Position, ChangeEvent]] = deque()
        self._closed = False
        self._stop = threading.Event()
        self._bell = Doorbell()
        if wakeup is not None:
            wakeup.subscribe(collection, self._bell)
        self._idle = self._options.min_poll_interval
        self._reconnects = 0
        self._epoch: int | None = None
        start_token = decode_token(resume_after) if resume_after is not None else None
        self._cursor = self._with_retry(
            lambda conn: self._start(conn, start_token, from_beginning), TOKEN_SAVE_TIMEOUT
        )
        self._delivered = self._cursor

    # -- public API -------------------------------------------------------------
    @property
    def collection(self) -> str:
        return self._collection

    @property
    def client_name(self) -> str | None:
        return self._client_name

    @property
    def epoch(self) -> int:
        """The store's token epoch this stream runs in (see the module docstring)."""
        assert self._epoch is not None  # set by the first connection
        return self._epoch

    @property
    def resume_token(self) -> ResumeToken:
        return (self._delivered if self._buffer else self._cursor).token(self.epoch)

    @property
    def position(self) -> Position:
        return self._delivered if self._buffer else self._cursor

    @property
    def buffered(self) -> int:
        """Events already read from the database and not yet returned."""
        return len(self._buffer)

    @property
    def reconnects(self) -> int:
        """How many times the stream reconnected after a connection loss."""
        return self._reconnects

    def __iter__(self) -> Iterator[ChangeEvent]:
        return self

    def __next__(self) -> ChangeEvent:
        event = self.try_next(timeout=None)
        if event is None:
            raise StopIteration
        return event

    def try_next(self, timeout: float | None = 0.0) -> ChangeEvent | None:
        """The next event, waiting at most ``timeout`` seconds (``None``: until one comes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            if self._buffer:
                position, event = self._buffer.popleft()
                self._delivered = position
                if self._observer is not None:
                    self._observer.on_event(self._collection, self._client_name or "", event)
                return event
            self._delivered = self._cursor
            read = self._poll_with_retry(deadline)
            if read > 0:
                # Changes are flowing: poll again at once (unless the time is up and
                # the filter let nothing through).
                self._idle = self._options.min_poll_interval
                if self._buffer or deadline is None or time.monotonic() < deadline:
                    continue
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            pause = self._idle if remaining is None else min(self._idle, remaining)
            self._idle = min(self._idle * 2, self._options.poll_interval)
            if self._wait(pause):
                # A change committed; if an older transaction still holds it
                # back, poll again soon rather than after the idle backoff.
                self._idle = self._options.min_poll_interval
        return None

    def save_token(self, token: ResumeToken | None = None) -> None:
        """Store ``token`` (default: :attr:`resume_token`) as this consumer's position."""
        if self._client_name is None:
            raise QueryError("save_token needs a stream opened with a client_name")
        position = self.position
        if token is not None:
            position, epoch = decode_token(token)
            self._check_epoch(epoch, "token to store")
        name = self._client_name
        self._with_retry(
            lambda conn: save_token(conn, name, self._collection, position), TOKEN_SAVE_TIMEOUT
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._bell.ring()
        if self._wakeup is not None:
            self._wakeup.unsubscribe(self._collection, self._bell)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._bell.close()

    # -- internals --------------------------------------------------------------
    def _start(
        self,
        conn: psycopg.Connection[Any],
        start: tuple[Position, int] | None,
        from_beginning: bool,
    ) -> Position:
        token = None
        if start is not None:
            token = start[0]
            self._check_epoch(start[1], "resume token")
        row = conn.execute(_FRONTIER_SQL, {"coll": self._collection}).fetchone()
        assert row is not None
        horizon = Position(int(row[0]), 0)
        frontier = None if row[1] is None else Position(int(row[1]), int(row[2]))
        source = "resume token"
        if token is None and self._client_name is not None:
            token = load_token(conn, self._client_name, self._collection)
            source = f"stored token of consumer {self._client_name!r}"
        if token is not None:
            self._check_history(token, frontier, source)
            return token
        if from_beginning:
            return frontier or START
        return horizon

    def _check_epoch(self, epoch: int, source: str) -> None:
        if epoch != self.epoch:
            raise HistoryLostError(
                f"{self._collection}: the {source} is from token epoch {epoch:x}, the store is in "
                f"epoch {self.epoch:x}: the store was restored from a backup since the token was "
                "issued, and its positions were renumbered. Resume from the consumer's stored "
                "token (restored with the data) or reset it"
            )

    def _check_history(self, position: Position, frontier: Position | None, source: str) -> None:
        if frontier is not None and position < frontier:
            raise HistoryLostError(
                f"{self._collection}: the {source} is at {position} but changes up to "
                f"{frontier} were pruned; the changes in between are lost. Recover "
                "(e.g. rescan the collection), then reset the consumer's token"
            )

    def _ensure_connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            # The poll must walk the cursor index in order and stop at the batch
            # size. With stale statistics (right after a burst of writes) the
            # planner may instead collect the whole backlog and sort it, on every
            # poll; on this dedicated connection, forbid the sort.
            conn.execute("SET enable_sort = off")
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            try:
                epoch = read_epoch(conn)
            except HistoryLostError:
                conn.close()
                raise
            if self._epoch is not None and epoch != self._epoch:
                conn.close()
                raise HistoryLostError(
                    f"change stream on {self._collection}: the store was restored from a backup "
                    f"while the stream ran (token epoch {self._epoch:x}, now {epoch:x}); resume "
                    "from the consumer's stored token or reset it"
                )
            self._epoch = epoch
            self._conn = conn
        return self._conn

    def _wait(self, pause: float) -> bool:
        """Sleep up to ``pause`` seconds, or until a change of the collection may be there.

        Woken (returns true) by a notification for the collection on the
        stream's connection, or by the doorbell (a write through the same
        store, or :meth:`close`). Any failure here only ends the wait: the next
        poll reconnects.
        """
        deadline = time.monotonic() + pause
        try:
            conn = self._ensure_connection()
            while not self._closed:
                if self._notified(conn):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                bell = self._bell.fileno()
                ready, _, _ = select.select([conn.fileno(), bell], [], [], remaining)
                if bell in ready:
                    self._bell.clear()
                    return True
                if not ready:
                    return False
        except (psycopg.OperationalError, psycopg.InterfaceError):
            # The server went away while the stream waited (the socket turned
            # readable at EOF): the next poll reconnects.
            if not self._closed:
                self._lost_connection()
                return True
        except (psycopg.Error, OSError, ValueError, StoreUnavailableError, HistoryLostError):
            # The next poll reports what is wrong.
            self._stop.wait(max(0.0, deadline - time.monotonic()))
        return False

    def _notified(self, conn: psycopg.Connection[Any]) -> bool:
        """Consume the notifications already received; whether one was for this collection."""
        return any(
            notifies_collection(note.payload, self._collection)
            for note in list(conn.notifies(timeout=0))
        )

    def _lost_connection(self) -> None:
        """Count a lost connection (metrics) and drop it; the next poll reconnects."""
        self._drop_connection()
        self._reconnects += 1
        if self._observer is not None:
            self._observer.on_reconnect(self._collection, self._client_name or "")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _with_retry(self, action: Callable[[psycopg.Connection[Any]], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                return action(self._ensure_connection())
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                self._drop_connection()
                if time.monotonic() + delay > deadline or self._closed:
                    raise StoreUnavailableError(
                        f"change stream on {self._collection}: the datastore is unreachable: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
                    ) from err
                self._stop.wait(delay)
                delay = min(delay * 2, self._options.reconnect_max_delay)

    def _poll_with_retry(self, deadline: float | None) -> int:
        delay = 0.05
        while True:
            try:
                conn = self._ensure_connection()
                started = time.perf_counter()
                read = self._poll(conn)
                if self._observer is not None:
                    self._observer.on_poll(
                        self._collection,
                        self._client_name or "",
                        time.perf_counter() - started,
                        read,
                    )
                return read
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._lost_connection()
                if self._closed:
                    return 0
                if deadline is not None and time.monotonic() + delay > deadline:
                    return 0
                self._stop.wait(delay)
                delay = min(delay * 2, self._options.reconnect_max_delay)

    def _poll(self, conn: psycopg.Connection[Any]) -> int:
        params = {
            "coll": self._collection,
            "txid": str(self._cursor.txid),
            "cid": self._cursor.change_id,
            "limit": self._options.batch_size,
        }
        rows = conn.execute(self._query, params).fetchall()
        if not rows:
            return 0
        horizon = int(rows[0][0])
        frontier = None if rows[0][1] is None else Position(int(rows[0][1]), int(rows[0][2]))
        self._check_history(self._cursor, frontier, "stream position")
        read = 0
        for row in rows:
            if row[3] is None:
                continue
            read += 1
            position = Position(int(row[4]), int(row[3]))
            event = build_event(
                self._database,
                self._collection,
                position.token(self.epoch),
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                row[10],
            )
            self._cursor = position
            if self._filter is MATCH_ALL or event_matches(event, self._filter):
                self._buffer.append((position, event))
        if read < self._options.batch_size:
            self._cursor = max(self._cursor, Position(horizon, 0))
        return read
