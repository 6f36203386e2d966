"""The collection API both providers implement, as typing Protocols.

The shapes follow pymongo's so that a service written against MongoDB reads the
same on PostgreSQL:

- documents are plain ``dict``s; ``_id`` is the record id (a string on
  PostgreSQL; ``insert_one`` generates a UUID string when the document has none);
- filters are MongoDB query documents on ``_id`` and dotted document paths with
  ``$eq``, ``$ne``, ``$in``, ``$nin``, ``$exists``, ``$gt``, ``$gte``, ``$lt``,
  ``$lte`` and top-level ``$and`` / ``$or``; anything else raises
  :class:`~nvsentinel_store.errors.QueryError` (never silently ignored);
- ``sort`` is a sequence of ``(path, 1 | -1)`` pairs like pymongo's;
- updates are ``{"$set": {path: value}, "$unset": {path: ""}}`` with dotted paths;
- ``watch`` returns a :class:`ChangeStream` of MongoDB-shaped change events
  (``_id`` the resume token, ``operationType``, ``ns``, ``documentKey``,
  ``fullDocument``, ``updateDescription``, ``clusterTime``).

Resume tokens are opaque ``{"_data": str}`` mappings, as on MongoDB. A stream
opened with a ``client_name`` can store its position under that name
(:meth:`ChangeStream.save_token`) and is resumed from it by the next ``watch``
with the same name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

Document = dict[str, Any]
Filter = Mapping[str, Any]
Update = Mapping[str, Mapping[str, Any]]
SortSpec = Sequence[tuple[str, int]]
ResumeToken = dict[str, str]
ChangeEvent = dict[str, Any]
Pipeline = Sequence[Mapping[str, Any]]

#: Collections the datastore holds (PostgreSQL tables of the same name).
COLLECTIONS: tuple[str, ...] = ("health_events", "maintenance_events")


class ClosingContext:
    """``with`` support for the stores and streams: leaving the block closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class UpdateResult:
    """What ``update_one`` did: documents matched and documents changed."""

    matched_count: int
    modified_count: int


class StreamObserver(Protocol):
    """Hooks a change stream calls as it works (metrics; see :mod:`nvsentinel_store.metrics`).

    Called on the stream's thread; must be quick and must not raise. ``consumer``
    is the stream's client name (``""`` without one).
    """

    def on_poll(self, collection: str, consumer: str, seconds: float, rows: int) -> None:
        """One poll of the changelog took ``seconds`` and read ``rows`` changes."""

    def on_event(self, collection: str, consumer: str, event: ChangeEvent) -> None:
        """An event was handed to the consumer."""

    def on_reconnect(self, collection: str, consumer: str) -> None:
        """The stream lost its connection and is reconnecting."""


@dataclass(frozen=True)
class WatchOptions:
    """Tuning of a change stream; the defaults suit the services.

    A stream polls again at once while polls return rows; after an empty poll
    it sleeps ``min_poll_interval``, doubling up to ``poll_interval`` while the
    polls stay empty. ``batch_size`` is the most changes read per poll;
    ``reconnect_max_delay`` caps the backoff between reconnection attempts after
    a connection loss. ``observer``, when set, is told about every poll,
    event and reconnection (PostgreSQL streams; metrics).
    """

    poll_interval: float = 0.1
    min_poll_interval: float = 0.001
    batch_size: int = 500
    reconnect_max_delay: float = 5.0
    observer: StreamObserver | None = None


@runtime_checkable
class ChangeStream(Protocol):
    """An iterator of change events that can be resumed.

    Iterating blocks until the next event; :meth:`try_next` waits at most
    ``timeout`` seconds and returns ``None`` when nothing arrived.
    """

    def __iter__(self) -> Iterator[ChangeEvent]: ...

    def __next__(self) -> ChangeEvent: ...

    def try_next(self, timeout: float = 0.0) -> ChangeEvent | None: ...

    @property
    def resume_token(self) -> ResumeToken | None:
        """The position after the last event returned (or the start position)."""
        ...

    def save_token(self, token: ResumeToken | None = None) -> None:
        """Store ``token`` (default: :attr:`resume_token`) under the stream's client name."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ChangeStream: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Collection(Protocol):
    """One collection (MongoDB) or event table (PostgreSQL)."""

    @property
    def name(self) -> str: ...

    def insert_one(self, document: Mapping[str, Any]) -> str:
        """Store ``document``; returns its ``_id`` (generated when absent)."""
        ...

    def find(
        self,
        filter: Filter | None = None,
        sort: SortSpec | None = None,
        limit: int = 0,
    ) -> list[Document]:
        """Documents matching ``filter`` in ``sort`` order; ``limit`` 0 means all."""
        ...

    def find_one(
        self, filter: Filter | None = None, sort: SortSpec | None = None
    ) -> Document | None: ...

    def update_one(self, filter: Filter, update: Update) -> UpdateResult:
        """Apply ``$set``/``$unset`` to the first document matching ``filter``."""
        ...

    def delete_one(self, filter: Filter) -> int:
        """Delete the first document matching ``filter``; returns 0 or 1."""
        ...

    def watch(
        self,
        pipeline: Pipeline | None = None,
        *,
        client_name: str | None = None,
        resume_after: ResumeToken | None = None,
        from_beginning: bool = False,
        options: WatchOptions | None = None,
    ) -> ChangeStream:
        """Open a change stream on this collection.

        Start position, first match wins: ``resume_after``; the token stored
        under ``client_name``; the oldest retained change when
        ``from_beginning``; otherwise now. ``pipeline`` holds at most ``$match``
        stages. A position older than the retained history raises
        :class:`~nvsentinel_store.errors.HistoryLostError`.
        """
        ...


@runtime_checkable
class Store(Protocol):
    """A connection to one datastore; a context manager that closes it."""

    def collection(self, name: str) -> Collection: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
