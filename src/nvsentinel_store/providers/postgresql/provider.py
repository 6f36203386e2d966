"""The PostgreSQL provider: the collection API on psycopg 3 and psycopg_pool.

Each collection is an event table (``health_events``, ``maintenance_events``)
of NVSentinel's schema, holding the document in ``document`` (JSONB); the
database's triggers fill the typed columns, the id (a UUID: the document's
``_id`` when that is one, else derived from it) and the version, and record the
change for change streams (see ``charts/nvsentinel/files/postgresql/migrations``).
Documents NVSentinel's services wrote have no ``_id``; they are read with the
row's id as their ``_id``.

Filters are translated to SQL by
:mod:`nvsentinel_store.providers.postgresql.query` (typed columns where they
fit, so the indexes serve the seed's queries; SQL/JSON paths otherwise).
``update_one`` reads the matching row ``FOR UPDATE``, applies ``$set`` and
``$unset`` in Python and writes the whole document back in the same
transaction; an update that changes nothing writes nothing (no change event),
as on MongoDB.

Connection loss: operations retry with exponential backoff until
``StoreOptions.retry_timeout``. An ``insert_one`` always sends an ``_id``
(generated when the document has none), so a retried insert whose first
attempt did commit is recognised and not stored twice. ``delete_one`` is not
retried once its statement was sent (the outcome would be unknown).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from nvsentinel_store.config import Settings, postgres_conninfo
from nvsentinel_store.errors import DuplicateKeyError, QueryError, StoreUnavailableError
from nvsentinel_store.providers.postgresql.changestream import PostgresChangeStream
from nvsentinel_store.providers.postgresql.positions import (
    Position,
    delete_token,
    load_token,
    read_epoch,
)
from nvsentinel_store.providers.postgresql.query import TABLE_COLUMNS, TableTarget, row_id
from nvsentinel_store.providers.postgresql.wakeup import Wakeup
from nvsentinel_store.query import apply_update, json_equal, parse_filter, to_json_value
from nvsentinel_store.store import (
    COLLECTIONS,
    ClosingContext,
    Document,
    Filter,
    Pipeline,
    ResumeToken,
    SortSpec,
    Update,
    UpdateResult,
    WatchOptions,
)
from nvsentinel_store.text import first_line

T = TypeVar("T")
#: A row's document with the row id as ``_id`` when the document has none.
DOCUMENT_WITH_ID: Final = sql.SQL("jsonb_build_object('_id', id::text) || document")
Conn = psycopg.Connection[TupleRow]

_RETRYABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
#: Document keys that give a document its id when it has no ``_id``.
_NATURAL_KEYS: Final[dict[str, tuple[str, ...]]] = {"maintenance_events": ("eventId", "eventid")}


@dataclass(frozen=True)
class StoreOptions:
    """Pool size and retry behaviour of a :class:`PostgresStore`."""

    min_pool_size: int = 1
    max_pool_size: int = 10
    #: How long an operation keeps retrying through connection loss.
    retry_timeout: float = 30.0
    #: Longest pause between two attempts.
    reconnect_max_delay: float = 5.0


#: The only login role besides the schema owner that may run datastore_changelog_prune (0003).
PRUNER_ROLE: Final = "nvsentinel_pruner"
#: The smallest max age datastore_changelog_prune accepts (0003).
PRUNE_MIN_AGE_SECONDS: Final = 3600
#: Changes deleted per collection in one prune transaction (0005). While a
#: batch runs, streams hold back the changes committed after it started; at
#: about 6 us a change (docs/benchmarks.md), 5,000 keep that near 30 ms.
PRUNE_BATCH_SIZE: Final = 5_000


@dataclass(frozen=True)
class PruneResult:
    """What a prune did for one collection, over all its batches."""

    collection: str
    deleted_changes: int
    expired_consumers: int
    #: Transactions (calls of ``datastore_changelog_prune``) it took.
    batches: int = 1


class PostgresStore(ClosingContext):
    """A connection pool to the NVSentinel database and its collections."""

    def __init__(
        self,
        conninfo: str,
        database: str,
        options: StoreOptions | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._database = database
        self._options = options or StoreOptions()
        self._wakeup = Wakeup()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            conninfo,
            min_size=self._options.min_pool_size,
            max_size=self._options.max_pool_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=min(self._options.retry_timeout, 10.0),
            name="nvsentinel-store",
            open=False,
        )
        self._pool.open(wait=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, options: StoreOptions | None = None
    ) -> PostgresStore:
        return cls(postgres_conninfo(settings), settings.database, options)

    @property
    def database(self) -> str:
        return self._database

    def connect(self) -> Conn:
        """A new autocommit connection outside the pool (change streams, tools)."""
        return psycopg.connect(self._conninfo, autocommit=True)

    def collection(self, name: str) -> PostgresCollection:
        if name not in COLLECTIONS:
            raise QueryError(f"unknown collection {name!r} (known: {', '.join(COLLECTIONS)})")
        return PostgresCollection(self, name)

    def run(self, action: Callable[[Conn], T], what: str, *, retry_sent: bool = True) -> T:
        """Run ``action`` on a pooled connection, retrying through connection loss.

        With ``retry_sent=False`` a failure after the connection was handed out
        is not retried (for operations that must not run twice).
        """
        deadline = time.monotonic() + self._options.retry_timeout
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            handed_out = False
            try:
                with self._pool.connection() as conn:
                    handed_out = True
                    return action(conn)
            except _RETRYABLE as err:
                if handed_out and not retry_sent:
                    raise StoreUnavailableError(
                        f"{what}: the connection was lost, the outcome is unknown: "
                        f"{first_line(err)}"
                    ) from err
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"{what}: the datastore is unreachable after {attempt} attempts: "
                        f"{first_line(err)}"
                    ) from err
                time.sleep(delay)
                delay = min(delay * 2, self._options.reconnect_max_delay)

    def notify(self, collection: str) -> None:
        self._wakeup.notify(collection)

    @property
    def wakeup(self) -> Wakeup:
        return self._wakeup

    def load_resume_token(self, client_name: str, collection: str) -> ResumeToken | None:
        def action(conn: Conn) -> ResumeToken | None:
            position = load_token(conn, client_name, collection)
            return None if position is None else position.token(read_epoch(conn))

        return self.run(action, "load token")

    def reset_resume_token(self, client_name: str, collection: str) -> bool:
        """Forget a consumer's position (after it recovered from lost history)."""
        return self.run(lambda c: delete_token(c, client_name, collection), "reset token")

    def prune(
        self, max_age_seconds: float, batch_size: int = PRUNE_BATCH_SIZE
    ) -> list[PruneResult]:
        """Expire silent consumers and delete old changes, ``batch_size`` per transaction.

        Calls ``datastore_changelog_prune(max_age, batch_size)`` until no
        collection had a full batch left, each call its own transaction, so
        that streams never wait for more than one batch. Only the pruner role
        (:data:`PRUNER_ROLE`) and the schema owner may, and the function
        refuses a max age below :data:`PRUNE_MIN_AGE_SECONDS`.
        """
        if max_age_seconds < 0:
            raise QueryError(f"max age must not be negative, got {max_age_seconds}")
        if batch_size < 1:
            raise QueryError(f"batch size must be at least 1, got {batch_size}")

        def one_batch(conn: Conn) -> list[tuple[str, int, int]]:
            try:
                rows = conn.execute(
                    "SELECT collection, deleted_changes, expired_consumers "
                    "FROM datastore_changelog_prune(make_interval(secs => %s), %s)",
                    (max_age_seconds, batch_size),
                ).fetchall()
            except psycopg.errors.InsufficientPrivilege as err:
                raise QueryError(
                    f"prune: role {conn.info.user!r} may not run datastore_changelog_prune; "
                    f"connect as {PRUNER_ROLE} (DATASTORE_USERNAME={PRUNER_ROLE} "
                    "and its client certificate)"
                ) from err
            except psycopg.errors.InvalidParameterValue as err:
                raise QueryError(f"prune: {first_line(err)}") from err
            return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

        totals: dict[str, PruneResult] = {}
        while True:
            rows = self.run(one_batch, "prune")
            for collection, deleted, expired in rows:
                seen = totals.get(collection)
                totals[collection] = (
                    PruneResult(collection, deleted, expired)
                    if seen is None
                    else PruneResult(
                        collection,
                        seen.deleted_changes + deleted,
                        seen.expired_consumers + expired,
                        seen.batches + 1,
                    )
                )
            if all(deleted < batch_size for _, deleted, _ in rows):
                return [totals[name] for name in sorted(totals)]

    def pool_stats(self) -> dict[str, int]:
        """The connection pool's usage: ``pool_size``, ``pool_available``, ``requests_waiting``
        (psycopg_pool's names), for metrics."""
        stats = self._pool.get_stats()
        return {
            k: int(stats.get(k, 0)) for k in ("pool_size", "pool_available", "requests_waiting")
        }

    def close(self) -> None:
        self._pool.close()


class PostgresCollection:
    """One event table behind the collection API."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        self._store = store
        self._name = name
        self._table = sql.Identifier(name)
        self._target = TableTarget(TABLE_COLUMNS[name])

    @property
    def name(self) -> str:
        return self._name

    def insert_one(self, document: Mapping[str, Any]) -> str:
        doc = to_json_value(document)
        if not isinstance(doc, dict):
            raise QueryError("a document must be a mapping")
        if doc.get("_id") is None:
            # Maintenance events are keyed by their eventId (a re-run finds them).
            natural = [doc.get(k) for k in _NATURAL_KEYS.get(self._name, ())]
            keys = [k for k in natural if isinstance(k, str) and k]
            doc["_id"] = keys[0] if keys else str(uuid.uuid4())
        elif isinstance(doc["_id"], bool) or not isinstance(doc["_id"], str | int):
            raise QueryError(f"_id must be a string, got {doc['_id']!r}")
        query = sql.SQL("INSERT INTO {} (document) VALUES (%s) RETURNING id").format(self._table)
        attempts = 0

        def action(conn: Conn) -> str:
            nonlocal attempts
            attempts += 1
            try:
                row = conn.execute(query, (Jsonb(doc),)).fetchone()
            except psycopg.errors.UniqueViolation as err:
                if attempts > 1 and self._same_stored(conn, doc):
                    return str(doc["_id"])  # the lost first attempt did commit
                raise DuplicateKeyError(
                    f"{self._name}: a document with _id {doc['_id']!r} already exists"
                    if "pkey" in (err.diag.constraint_name or "")
                    else f"{self._name}: {first_line(err)}"
                ) from err
            assert row is not None
            return str(doc["_id"])

        inserted = self._store.run(action, f"insert into {self._name}")
        self._store.notify(self._name)
        return inserted

    def _same_stored(self, conn: Conn, doc: dict[str, Any]) -> bool:
        row = conn.execute(
            sql.SQL("SELECT document FROM {} WHERE id = {}").format(self._table, row_id(doc["_id"]))
        ).fetchone()
        return row is not None and json_equal(row[0], doc)

    def _select(self, filter: Filter | None, sort: SortSpec | None, limit: int) -> sql.Composed:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise QueryError(f"limit must be a non-negative integer, got {limit!r}")
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            DOCUMENT_WITH_ID, self._table, self._target.where(parse_filter(filter))
        )
        order = self._target.order_by(sort)
        if order is not None:
            query = sql.SQL("{} ORDER BY {}").format(query, order)
        if limit:
            query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
        return query

    def find(
        self,
        filter: Filter | None = None,
        sort: SortSpec | None = None,
        limit: int = 0,
    ) -> list[Document]:
        query = self._select(filter, sort, limit)
        rows = self._store.run(lambda c: c.execute(query).fetchall(), f"find in {self._name}")
        return [dict(r[0]) for r in rows]

    def find_one(
        self, filter: Filter | None = None, sort: SortSpec | None = None
    ) -> Document | None:
        found = self.find(filter, sort, limit=1)
        return found[0] if found else None

    def explain(
        self, filter: Filter | None = None, sort: SortSpec | None = None, limit: int = 0
    ) -> str:
        """The query plan of ``find(filter, sort, limit)`` (EXPLAIN text)."""
        query = sql.SQL("EXPLAIN {}").format(self._select(filter, sort, limit))
        rows = self._store.run(lambda c: c.execute(query).fetchall(), "explain")
        return "\n".join(str(r[0]) for r in rows)

    def update_one(self, filter: Filter, update: Update) -> UpdateResult:
        apply_update({}, update)  # validate before touching the database
        where = self._target.where(parse_filter(filter))
        select = sql.SQL("SELECT id, document FROM {} WHERE {} LIMIT 1 FOR UPDATE").format(
            self._table, where
        )
        write = sql.SQL("UPDATE {} SET document = %s WHERE id = %s").format(self._table)

        def action(conn: Conn) -> UpdateResult:
            with conn.transaction():
                row = conn.execute(select).fetchone()
                if row is None:
                    return UpdateResult(0, 0)
                before = row[1]
                after = apply_update(before, update)
                if json_equal(before, after):
                    return UpdateResult(1, 0)
                conn.execute(write, (Jsonb(after), row[0]))
                return UpdateResult(1, 1)

        result = self._store.run(action, f"update in {self._name}")
        if result.modified_count:
            self._store.notify(self._name)
        return result

    def delete_one(self, filter: Filter) -> int:
        where = self._target.where(parse_filter(filter))
        query = sql.SQL(
            "DELETE FROM {t} WHERE id = (SELECT id FROM {t} WHERE {w} LIMIT 1 FOR UPDATE)"
        ).format(t=self._table, w=where)
        deleted = self._store.run(
            lambda c: c.execute(query).rowcount, f"delete from {self._name}", retry_sent=False
        )
        if deleted:
            self._store.notify(self._name)
        return int(deleted)

    def watch(
        self,
        pipeline: Pipeline | None = None,
        *,
        client_name: str | None = None,
        resume_after: ResumeToken | None = None,
        from_beginning: bool = False,
        options: WatchOptions | None = None,
    ) -> PostgresChangeStream:
        return PostgresChangeStream(
            self._store.connect,
            self._store.database,
            self._name,
            pipeline,
            client_name=client_name,
            resume_after=resume_after,
            from_beginning=from_beginning,
            options=options,
            wakeup=self._store.wakeup,
        )


__all__ = ["Position", "PostgresCollection", "PostgresStore", "PruneResult", "StoreOptions"]
