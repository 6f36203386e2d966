"""The collection API on MongoDB (pymongo), with MongoDB's native change streams.

Behaviour shared with the PostgreSQL provider (see :mod:`nvsentinel_store.store`):

- filters, sorts, updates and watch pipelines are checked with
  :mod:`nvsentinel_store.query` before they are sent, so an operator this
  package does not support raises :class:`~nvsentinel_store.errors.QueryError`
  on both providers instead of working on one only;
- ``insert_one`` gives a document without ``_id`` a UUID string;
- a stream opened with ``client_name`` stores its resume token in the
  ``resume_tokens`` collection and the next ``watch`` with that name resumes
  from it.

Connection loss: pymongo retries a read or write once itself (retryable reads
and writes); on top of that, reads, inserts and updates are retried with
exponential backoff until :attr:`RetryPolicy.deadline` and then raise
:class:`~nvsentinel_store.errors.StoreUnavailableError`. ``delete_one`` is not
retried beyond pymongo's own retry: a second attempt could delete a different
matching document. A change stream that loses its connection reopens from its
last resume token, with backoff up to ``WatchOptions.reconnect_max_delay``; a
position the oplog no longer holds raises
:class:`~nvsentinel_store.errors.HistoryLostError`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bson.timestamp import Timestamp
from pymongo import MongoClient
from pymongo.change_stream import CollectionChangeStream
from pymongo.collection import Collection as PyMongoCollection
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from nvsentinel_store.config import Settings, mongo_client_kwargs
from nvsentinel_store.errors import ConfigError, HistoryLostError, QueryError, StoreUnavailableError
from nvsentinel_store.query import apply_update, parse_filter, split_path
from nvsentinel_store.store import (
    ChangeEvent,
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

#: The collection that holds the tokens of named change streams.
RESUME_TOKENS_COLLECTION = "resume_tokens"
#: MongoDB's error code for a resume point the oplog no longer holds.
HISTORY_LOST_CODE = 286

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for operations that meet a connection loss: first delay, cap, total deadline."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    deadline: float = 30.0


def _backoff(initial: float, cap: float) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, cap)


def _check_sort(sort: SortSpec | None) -> list[tuple[str, int]] | None:
    if sort is None:
        return None
    checked: list[tuple[str, int]] = []
    for item in sort:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise QueryError(f"a sort is a list of (path, 1 | -1) pairs, got {item!r}")
        path, direction = item
        split_path(path)
        if direction not in (1, -1) or isinstance(direction, bool):
            raise QueryError(f"sort direction of {path!r} must be 1 or -1, got {direction!r}")
        checked.append((path, direction))
    return checked


def check_pipeline(pipeline: Pipeline | None) -> list[dict[str, Any]]:
    """A watch pipeline of ``$match`` stages only (as the PostgreSQL provider takes)."""
    stages: list[dict[str, Any]] = []
    for stage in pipeline or ():
        if not isinstance(stage, Mapping) or list(stage) != ["$match"]:
            raise QueryError(f"watch pipelines may hold only $match stages, got {stage!r}")
        parse_filter(stage["$match"])
        stages.append({"$match": stage["$match"]})
    return stages


def _is_history_lost(err: PyMongoError) -> bool:
    return isinstance(err, OperationFailure) and err.code == HISTORY_LOST_CODE


def _is_resumable(err: PyMongoError) -> bool:
    if isinstance(err, ConnectionFailure):
        return True
    return isinstance(err, OperationFailure) and err.has_error_label("ResumableChangeStreamError")


class MongoChangeStream(ClosingContext):
    """A MongoDB change stream that reopens from its last token after a connection loss."""

    def __init__(
        self,
        owner: MongoCollection,
        pipeline: list[dict[str, Any]],
        *,
        client_name: str | None,
        resume_after: ResumeToken | None,
        start_at_operation_time: Timestamp | None,
        options: WatchOptions,
    ) -> None:
        self._owner = owner
        self._pipeline = pipeline
        self._client_name = client_name
        self._options = options
        self._token: ResumeToken | None = resume_after
        self._start_at = start_at_operation_time
        self._stream: CollectionChangeStream[Document] | None = None
        self._closed = False
        self._open()

    def _open(self) -> None:
        kwargs: dict[str, Any] = {
            "full_document": "updateLookup",
            "max_await_time_ms": max(1, int(self._options.poll_interval * 1000)),
            "batch_size": self._options.batch_size,
        }
        if self._token is not None:
            kwargs["resume_after"] = self._token
        elif self._start_at is not None:
            kwargs["start_at_operation_time"] = self._start_at
        try:
            self._stream = self._owner.raw.watch(self._pipeline, **kwargs)
        except OperationFailure as err:
            if _is_history_lost(err):
                raise HistoryLostError(
                    f"{self._owner.name}: the change stream cannot resume from {self._token}: "
                    f"the oplog no longer holds that position ({err})"
                ) from err
            raise
        if self._token is None:
            # Pin the start position now, so a reopen after a loss starts here.
            token = self._stream.resume_token
            self._token = dict(token) if token is not None else None

    def _reopen(self, cause: PyMongoError) -> None:
        delays = _backoff(0.1, self._options.reconnect_max_delay)
        last: PyMongoError = cause
        while not self._closed:
            if self._stream is not None:
                with contextlib.suppress(PyMongoError):
                    self._stream.close()
                self._stream = None
            time.sleep(next(delays))
            try:
                self._open()
                return
            except PyMongoError as err:
                if not _is_resumable(err):
                    raise
                last = err
        raise StoreUnavailableError(f"{self._owner.name}: change stream closed: {last}")

    def try_next(self, timeout: float = 0.0) -> ChangeEvent | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._closed or self._stream is None:
                raise StopIteration
            try:
                event = self._stream.try_next()
            except PyMongoError as err:
                if _is_history_lost(err):
                    raise HistoryLostError(
                        f"{self._owner.name}: the change stream fell off the oplog: {err}"
                    ) from err
                if not _is_resumable(err):
                    raise
                self._reopen(err)
                continue
            token = self._stream.resume_token
            if token is not None:
                self._token = dict(token)
            if event is not None:
                return event
            if time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[ChangeEvent]:
        return self

    def __next__(self) -> ChangeEvent:
        while True:
            event = self.try_next(timeout=self._options.poll_interval)
            if event is not None:
                return event

    @property
    def resume_token(self) -> ResumeToken | None:
        return dict(self._token) if self._token is not None else None

    def save_token(self, token: ResumeToken | None = None) -> None:
        if self._client_name is None:
            raise QueryError("save_token needs a stream opened with client_name")
        token = token if token is not None else self.resume_token
        if token is None:
            return
        self._owner.store.save_resume_token(self._client_name, self._owner.name, token)

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class MongoCollection:
    """One MongoDB collection behind the collection API."""

    def __init__(self, store: MongoStore, raw: PyMongoCollection[Document]) -> None:
        self.store = store
        self.raw = raw

    @property
    def name(self) -> str:
        return self.raw.name

    def insert_one(self, document: Mapping[str, Any]) -> str:
        doc = dict(document)
        if "_id" not in doc:
            doc["_id"] = str(uuid.uuid4())
        first = True

        def insert() -> None:
            nonlocal first
            try:
                self.raw.insert_one(dict(doc))
            except DuplicateKeyError:
                # A retry after a lost reply: the first attempt stored it.
                if first:
                    raise
            finally:
                first = False

        self.store.retry(insert, f"insert into {self.name}")
        return str(doc["_id"])

    def find(
        self,
        filter: Filter | None = None,
        sort: SortSpec | None = None,
        limit: int = 0,
    ) -> list[Document]:
        parse_filter(filter)
        order = _check_sort(sort)
        if limit < 0:
            raise QueryError(f"limit must be 0 (all) or positive, got {limit}")

        def query() -> list[Document]:
            cursor = self.raw.find(dict(filter or {}), sort=order, limit=limit)
            return list(cursor)

        return self.store.retry(query, f"find in {self.name}")

    def find_one(
        self, filter: Filter | None = None, sort: SortSpec | None = None
    ) -> Document | None:
        found = self.find(filter, sort, limit=1)
        return found[0] if found else None

    def update_one(self, filter: Filter, update: Update) -> UpdateResult:
        parse_filter(filter)
        apply_update({}, update)  # the same checks as on PostgreSQL: $set/$unset, paths, _id
        body = {op: dict(fields) for op, fields in update.items() if fields}

        def run() -> UpdateResult:
            result = self.raw.update_one(dict(filter), body)
            return UpdateResult(result.matched_count, result.modified_count)

        return self.store.retry(run, f"update in {self.name}")

    def delete_one(self, filter: Filter) -> int:
        parse_filter(filter)
        try:
            return self.raw.delete_one(dict(filter)).deleted_count
        except ConnectionFailure as err:
            raise StoreUnavailableError(f"delete in {self.name}: {err}") from err

    def watch(
        self,
        pipeline: Pipeline | None = None,
        *,
        client_name: str | None = None,
        resume_after: ResumeToken | None = None,
        from_beginning: bool = False,
        options: WatchOptions | None = None,
        start_at_operation_time: Timestamp | None = None,
    ) -> MongoChangeStream:
        """Open a change stream; start position as in :meth:`Collection.watch`.

        ``start_at_operation_time`` (MongoDB only) starts at a cluster time
        when no token applies.
        """
        stages = check_pipeline(pipeline)
        token = resume_after
        if token is None and client_name is not None:
            token = self.store.load_resume_token(client_name, self.name)
        start_at = start_at_operation_time
        if token is None and start_at is None and from_beginning:
            start_at = self.store.oldest_oplog_time()
        return MongoChangeStream(
            self,
            stages,
            client_name=client_name,
            resume_after=token,
            start_at_operation_time=start_at,
            options=options or WatchOptions(),
        )


class MongoStore(ClosingContext):
    """A MongoDB connection behind the collection API; a context manager that closes it."""

    def __init__(
        self,
        client: MongoClient[Document],
        database: str,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.database = client[database]
        self.retry_policy = retry_policy or RetryPolicy()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        replica_set: str | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> MongoStore:
        """Connect as ``settings`` say (see :func:`~nvsentinel_store.config.mongo_client_kwargs`).

        The combined certificate+key file pymongo needs exists only while the
        client is created (pymongo loads it then) and is removed at once.
        """
        with tempfile.TemporaryDirectory(prefix="nvsentinel-mongo-tls-") as pem_dir:
            kwargs = mongo_client_kwargs(
                settings, pem_directory=Path(pem_dir), replica_set=replica_set
            )
            try:
                client: MongoClient[Document] = MongoClient(**kwargs)
            except ConfigurationError as err:
                raise ConfigError(
                    f"MongoDB client settings rejected (client certificate {settings.sslcert}, "
                    f"key {settings.sslkey}, CA {settings.sslrootcert}): {err}"
                ) from err
        return cls(client, settings.database, retry_policy)

    def collection(self, name: str) -> MongoCollection:
        return MongoCollection(self, self.database[name])

    def retry(self, operation: Callable[[], T], what: str) -> T:
        """Run ``operation``, retrying connection failures with backoff until the deadline."""
        policy = self.retry_policy
        deadline = time.monotonic() + policy.deadline
        delays = _backoff(policy.initial_delay, policy.max_delay)
        while True:
            try:
                return operation()
            except ConnectionFailure as err:
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"{what}: MongoDB unreachable for {policy.deadline:g}s: {err}"
                    ) from err
                time.sleep(delay)

    # -- named stream positions ----------------------------------------------------
    def load_resume_token(self, client_name: str, collection: str) -> ResumeToken | None:
        doc = self.retry(
            lambda: self.database[RESUME_TOKENS_COLLECTION].find_one(
                {"_id": {"client": client_name, "collection": collection}}
            ),
            f"load resume token of {client_name}",
        )
        if doc is None:
            return None
        return dict(doc["token"])

    def save_resume_token(self, client_name: str, collection: str, token: ResumeToken) -> None:
        def save() -> None:
            self.database[RESUME_TOKENS_COLLECTION].update_one(
                {"_id": {"client": client_name, "collection": collection}},
                {"$set": {"token": dict(token), "updatedAt": datetime.now(UTC)}},
                upsert=True,
            )

        self.retry(save, f"save resume token of {client_name}")

    def oldest_oplog_time(self) -> Timestamp:
        """The cluster time of the oldest oplog entry (the oldest position a stream can take)."""

        def oldest() -> Document | None:
            return self.client.local["oplog.rs"].find_one({}, sort=[("$natural", 1)])

        entry = self.retry(oldest, "read the oldest oplog entry")
        if entry is None or not isinstance(entry.get("ts"), Timestamp):
            raise StoreUnavailableError("the oplog is empty or unreadable (is this a replica set?)")
        ts: Timestamp = entry["ts"]
        return ts

    def close(self) -> None:
        self.client.close()
