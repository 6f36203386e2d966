"""MongoDB to PostgreSQL: import ``health_events`` and ``maintenance_events`` documents.

Sources: files written by ``mongoexport`` (extended JSON, one document per
line, canonical or relaxed; ``.gz`` files are read too), or a live MongoDB
through pymongo. Target: the PostgreSQL event tables, in bulk: each batch is
copied (``COPY``) into a temporary staging table and moved with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, so the documents keep their
``_id`` and a second run adds nothing. A document whose ``_id`` is already
stored with different content (e.g. updated by the services since) is never
overwritten: it is reported as a :class:`Conflict` (``_id`` and ``file:line``).

Ids: NVSentinel's tables key rows by a UUID ``id``. A document keeps its
``_id`` exactly as converted below (an ObjectId as its 24-digit hex string);
the row's ``id`` is that ``_id`` when it is a UUID and otherwise the UUID
``md5('nvsentinel:' || _id)`` (the extraction trigger's
``nvsentinel_document_uuid``), so a second run lands on the same rows.
NVSentinel's services address rows by that UUID (``WHERE id = $1::uuid``) and
receive it as ``id`` in their change events; this project's store reads the
document's ``_id``.

Conversion to the JSON the PostgreSQL store keeps (extended JSON is parsed
with :mod:`bson.json_util`):

- ObjectId: its 24-digit hex string; UUID (``$uuid``, binary subtype 4): the
  UUID string; other binary: base64 text.
- Dates: RFC 3339 in UTC with microseconds (``2026-01-02T03:04:05.123000Z``),
  exactly what :func:`nvsentinel_store.query.encode_datetime` writes for the
  Python store, and what the schema's trigger reads into timestamp columns.
- ``$numberLong`` / ``$numberInt``: JSON integers; ``$numberDouble``: a JSON
  number (NaN and infinities cannot be stored in JSON: the document is
  rejected); ``$numberDecimal``: a JSON number when it is an integer or a
  double without loss, else its decimal text.
- ``$timestamp``: ``{"t": seconds, "i": increment}``.
- Other BSON types (regular expressions, code, DBRef, min/max key): the
  document is rejected with the path of the value.

Checks: every document must be an object with an ``_id``, nesting objects and
arrays at most :data:`~nvsentinel_store.query.MAX_NESTING_DEPTH` (100) levels
deep (checked on the text before a line is parsed, and on a live document
before it is converted); a health event needs
``healthevent.nodename`` (or ``healthEvent``/``nodeName``), a maintenance event
``eventId`` (a maintenance event without ``_id`` takes its ``eventId``, as
:meth:`~nvsentinel_store.providers.postgresql.PostgresCollection.insert_one`
does). A document that fails (unparseable line, missing field, a value
PostgreSQL refuses) is a :class:`Reject` with its ``file:line`` or id; the rest
of the batch still goes in.

Change events: by default the import does NOT produce change events. Imported
documents are history, and consumers that watch ``health_events`` (quarantine,
drain, remediation) must not act on them as if they had just happened. Each
batch runs in one transaction that disables the table's change log trigger
(``ALTER TABLE ... DISABLE TRIGGER <table>_changes``, NVSentinel's), inserts, and
enables it again. The trigger's state is transactional and the statement holds
a SHARE ROW EXCLUSIVE lock until commit, so concurrent writers of the table
wait for the batch (well under a second) and are captured as usual; no writer
ever sees the trigger disabled, and a failed batch rolls the change back. This
needs the tables' owner (``nvsentinel_migrator``). With
``MigrateOptions.capture_changes`` the triggers stay on (any role with INSERT
will do) and every imported document becomes an ``insert`` change.

This module never prints: it reports through the ``on_progress`` and
``on_reject`` callbacks and returns a :class:`MigrationReport`.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import math
import pickle
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final

import psycopg
from bson import json_util
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.json_util import JSONOptions
from bson.objectid import ObjectId
from bson.timestamp import Timestamp
from psycopg import sql
from psycopg.rows import TupleRow

from nvsentinel_store.errors import ConfigError, StoreUnavailableError
from nvsentinel_store.query import (
    MAX_NESTING_DEPTH,
    contains_nul,
    encode_datetime,
    json_equal,
    json_text_too_deep,
    value_too_deep,
)
from nvsentinel_store.store import COLLECTIONS

Conn = psycopg.Connection[TupleRow]

DEFAULT_BATCH_SIZE: Final = 5000
DEFAULT_SAMPLE_SIZE: Final = 100
#: File name endings read from a directory.
FILE_SUFFIXES: Final = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")
#: The change log trigger of each event table (NVSentinel's log_table_changes, migration 0001).
CHANGE_LOG_TRIGGER: Final = {name: f"{name}_changes" for name in COLLECTIONS}
#: A stored document's ``_id`` as text, the form ``check_document`` returns; a
#: document NVSentinel's services wrote has none and is read with its row id, as
#: the store reads it.
_ID_TEXT: Final = "coalesce(document ->> '_id', id::text)"
#: Rows whose documents have one of the ``_id`` texts of a ``text[]`` parameter
#: (the row id is derived from the ``_id`` as the extraction trigger does).
_IDS_MATCH: Final = (
    "id IN (SELECT nvsentinel_document_uuid(to_jsonb(t)) FROM unnest(%s::text[]) AS t)"
)

#: Extended JSON as mongoexport writes it; datetimes in UTC, UUIDs as uuid.UUID,
#: dates beyond Python's range kept as DatetimeMS (and then rejected).
JSON_OPTIONS: Final = JSONOptions(
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)
#: The same decoding for documents read live from MongoDB.
CODEC_OPTIONS: Final[CodecOptions[dict[str, Any]]] = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=UTC,
    uuid_representation=UuidRepresentation.STANDARD,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
)

ProgressCallback = Callable[["Progress"], None]
RejectCallback = Callable[["Reject"], None]
ConflictCallback = Callable[["Conflict"], None]

_TOO_DEEP: Final = (
    f"objects and arrays nested deeper than {MAX_NESTING_DEPTH} levels (the limit; "
    "MongoDB's own is 100)"
)


class InvalidDocument(ValueError):
    """A document that cannot be imported; the message says why (and where in it)."""


# -- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reject:
    """A document that was not imported: where it came from, why, and its text as read."""

    collection: str
    where: str
    reason: str
    raw: str
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "where": self.where,
            "id": self.id,
            "reason": self.reason,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class Conflict:
    """A document whose ``_id`` the target already holds with different content.

    The stored copy is kept (the import never overwrites); ``where`` is the
    source's ``file:line`` or ``_id``.
    """

    collection: str
    id: str
    where: str


@dataclass
class CollectionSummary:
    """Counts of one collection: documents read, imported, already present, rejected.

    ``already_present`` includes the ``conflicts``: documents stored under the
    same ``_id`` with different content.
    """

    collection: str
    read: int = 0
    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    #: Documents the target table holds after the run (also counted in a dry run).
    target_count: int | None = None
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """A progress report after each batch (``done`` once a collection is finished)."""

    collection: str
    source: str
    read: int
    imported: int
    already_present: int
    rejected: int
    elapsed: float
    done: bool = False

    @property
    def rate(self) -> float:
        """Documents read per second so far."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class Mismatch:
    """A sampled document whose stored copy differs: its id and the differing paths."""

    id: str
    differences: tuple[str, ...]


@dataclass
class VerifyResult:
    """``--verify`` of one collection: counts on both sides and a sample compared.

    ``source_count`` is what the source holds now: the documents in the files,
    or MongoDB's count when verifying (more than ``read`` means documents were
    written to MongoDB after they were read). ``expected`` is the number of
    distinct ids that passed the checks; ``found`` how many of them the target
    holds; ``target_count`` everything the target holds (it may be more:
    events the services wrote since the switch). ``mismatches`` are sampled
    documents whose stored copy differs field by field.
    """

    collection: str
    source_count: int
    read: int
    rejected: int
    expected: int
    found: int
    target_count: int
    sampled: int
    missing_ids: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.found == self.expected and not self.mismatches and self.source_count == self.read
        )


@dataclass
class MigrationReport:
    """What a run did, per collection; ``verify`` is filled when verification ran."""

    dry_run: bool
    capture_changes: bool
    summaries: dict[str, CollectionSummary]
    verify: dict[str, VerifyResult] | None = None
    elapsed: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.summaries.values())

    @property
    def verified(self) -> bool | None:
        """``None`` when verification did not run."""
        if self.verify is None:
            return None
        return all(v.ok for v in self.verify.values())

    @property
    def read(self) -> int:
        return sum(s.read for s in self.summaries.values())

    @property
    def conflicts(self) -> list[Conflict]:
        """Documents already stored with different content, in every collection."""
        return [c for s in self.summaries.values() for c in s.conflicts]


@dataclass(frozen=True)
class MigrateOptions:
    """How to import; the defaults suit an operator's one-off migration."""

    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    #: Let the import produce change events (see the module docstring).
    capture_changes: bool = False
    verify: bool = False
    #: Documents per collection compared field by field by ``verify``.
    sample_size: int = DEFAULT_SAMPLE_SIZE
    #: Documents stored under their ``_id`` with different content (a
    #: :class:`Conflict`) are kept either way; with ``keep_existing`` that is
    #: intended and ``verify`` leaves them out of its sample (without it, a
    #: sampled one is a mismatch).
    keep_existing: bool = False
    #: Files at least this big are parsed by a separate process (0: every file;
    #: ``None``: none).
    subprocess_min_bytes: int | None = 4 * 1024 * 1024


# -- conversion ------------------------------------------------------------------------


def to_store_json(value: Any, path: str = "") -> Any:
    """A value decoded from BSON or extended JSON, as the PostgreSQL store keeps it."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):  # also Int64
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidDocument(f"{path or 'document'}: {value!r} cannot be stored in JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[str(key)] = to_store_json(item, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list | tuple):
        return [to_store_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype == 4 and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    if isinstance(value, bytes):  # Binary is a bytes subclass
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal128):
        return _decimal(value.to_decimal(), path)
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    if isinstance(value, DatetimeMS):
        raise InvalidDocument(
            f"{path}: date {int(value)} ms since 1970 is outside the years 1-9999"
        )
    raise InvalidDocument(
        f"{path or 'document'}: BSON type {type(value).__name__} is not supported"
    )


def rfc3339(value: datetime) -> str:
    """:func:`~nvsentinel_store.query.encode_datetime`'s exact output, without strftime's cost."""
    if value.tzinfo is None or value.year < 1000:
        return encode_datetime(value)
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    if len(text) != 32 or not text.endswith("+00:00"):
        return encode_datetime(value)
    return text[:26] + "Z"


def _decimal(number: Decimal, path: str) -> Any:
    if not number.is_finite():
        raise InvalidDocument(f"{path}: decimal {number} cannot be stored in JSON")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(number)
    as_float = float(number)
    if Decimal(repr(as_float)) == number:
        return as_float
    return str(number)


def _object_hook(obj: dict[str, Any]) -> Any:
    """json.loads hook: extended JSON objects through bson.json_util, converted at once.

    Extended JSON wrappers have one to three keys, the first starting with
    ``$``; larger objects and objects without such a key are returned as they
    are. Two shortcuts, several times faster and with json_util's result:
    ``{"$oid": <24 hex digits>}`` is the lower-case hex string, and the ISO
    date strings of relaxed mode go through :meth:`datetime.fromisoformat`;
    anything they do not take goes to json_util.
    """
    if len(obj) > 3:
        return obj
    for key in obj:
        if key[:1] == "$":
            break
    else:
        return obj
    if len(obj) == 1:
        oid = obj.get("$oid")
        if type(oid) is str and len(oid) == 24:
            try:
                int(oid, 16)
            except ValueError:
                pass  # let json_util decide
            else:
                return oid.lower()
    date = obj.get("$date")
    if type(date) is str and len(obj) == 1 and len(date) >= 20 and date[10] == "T":
        try:
            return rfc3339(datetime.fromisoformat(date))
        except ValueError:
            pass  # let json_util decide
    decoded = json_util.object_hook(obj, JSON_OPTIONS)
    if isinstance(decoded, dict):
        return decoded  # not an extended JSON type: an ordinary object
    try:
        return to_store_json(decoded, key)
    except InvalidDocument as err:
        raise InvalidDocument(f"extended JSON {key}: {err}") from err


def parse_line(text: str) -> dict[str, Any]:
    """One line of mongoexport output as the store's JSON document (unchecked).

    A line nesting deeper than :data:`~nvsentinel_store.query.MAX_NESTING_DEPTH`
    is refused before it is parsed.
    """
    if json_text_too_deep(text):
        raise InvalidDocument(_TOO_DEEP)
    try:
        value = json.loads(text, object_hook=_object_hook, parse_constant=_no_constant)
    except InvalidDocument:
        raise
    except RecursionError:
        raise InvalidDocument(_TOO_DEEP) from None
    except (ValueError, TypeError, KeyError, OverflowError) as err:
        stripped = text.strip()
        if stripped in ("[", "]") or stripped.startswith("[{"):
            raise InvalidDocument(
                "not one document per line (exported with --jsonArray? export without it)"
            ) from err
        raise InvalidDocument(f"not valid extended JSON: {err}") from err
    if not isinstance(value, dict):
        raise InvalidDocument(f"a document must be a JSON object, got {type(value).__name__}")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidDocument(f"{name} cannot be stored in JSON")


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def check_document(collection: str, doc: dict[str, Any]) -> str:
    """Check the fields a collection needs; returns the document's id (text), may set ``_id``."""
    if collection == "maintenance_events":
        event_id = doc.get("eventId", doc.get("eventid"))
        if not _non_empty_string(event_id):
            raise InvalidDocument("missing required field eventId (a non-empty string)")
        if doc.get("_id") is None:
            doc["_id"] = event_id
    else:
        he = doc.get("healthevent", doc.get("healthEvent"))
        if not isinstance(he, dict):
            raise InvalidDocument("missing required field healthevent (an object)")
        node = he.get("nodename", he.get("nodeName"))
        if not _non_empty_string(node):
            raise InvalidDocument(
                "missing required field healthevent.nodename (a non-empty string)"
            )
    doc_id = doc.get("_id")
    if doc_id is None:
        raise InvalidDocument(
            "missing _id: without it a second run could not recognise the document"
        )
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise InvalidDocument(f"_id must be a string, ObjectId, UUID or integer, got {doc_id!r}")
    return str(doc_id)


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dump(doc: dict[str, Any]) -> str:
    text = _ENCODER.encode(doc)
    if "\\u0000" in text and contains_nul(doc):
        raise InvalidDocument("a string holds a NUL character, which PostgreSQL cannot store")
    return text


# -- sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One document read from a source: where it came from, its text, and its parse.

    ``document`` is ``None`` when ``error`` says why it could not be read.
    """

    where: str
    raw: str
    document: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class Source:
    """The documents of one collection from one place (a file, a MongoDB collection)."""

    collection: str
    name: str
    records: Callable[[], Iterator[Record]]
    #: The number of documents the source holds now (live MongoDB), for verify.
    count: Callable[[], int] | None = None
    #: The file, for file sources (big files are parsed in a separate process).
    path: Path | None = None


def collection_for_file(path: Path) -> str | None:
    """The collection a file name names: ``health_events*.json`` -> ``health_events``.

    The name (lower-cased, ``-`` read as ``_``) must start with a collection name.
    """
    name = path.name.lower().replace("-", "_")
    for collection in sorted(COLLECTIONS, key=len, reverse=True):
        if name.startswith(collection):
            return collection
    return None


def file_sources(paths: Sequence[Path], collections: Sequence[str]) -> list[Source]:
    """Sources for files and directories, by the file name rule of :func:`collection_for_file`.

    A directory contributes its files ending in :data:`FILE_SUFFIXES` whose
    name maps to one of ``collections``; others are ignored. A file given by
    name must map to one of ``collections``, or, when exactly one collection
    is selected, it is read as that collection.
    """
    sources: list[Source] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if not child.is_file() or not child.name.lower().endswith(FILE_SUFFIXES):
                    continue
                named = collection_for_file(child)
                if named is not None and named in collections:
                    sources.append(_file_source(child, named))
        elif path.is_file():
            collection = collection_for_file(path)
            if collection is None and len(collections) == 1:
                collection = collections[0]
            if collection is None:
                raise ConfigError(
                    f"{path}: the file name names no collection (it must start with "
                    f"{' or '.join(COLLECTIONS)}); rename it or pass --collection"
                )
            if collection not in collections:
                raise ConfigError(
                    f"{path} holds {collection}, which is not selected "
                    f"(--collection {' '.join(collections)})"
                )
            sources.append(_file_source(path, collection))
        else:
            raise ConfigError(f"{path} does not exist")
    if not sources:
        names = ", ".join(str(p) for p in paths)
        raise ConfigError(
            f"no export files for {', '.join(collections)} in {names} (expected names like "
            "health_events.json, maintenance_events.json)"
        )
    return sources


def _file_source(path: Path, collection: str) -> Source:
    return Source(collection, str(path), lambda: read_file(path), path=path)


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_file(path: Path) -> Iterator[Record]:
    """The documents of one mongoexport file, one per line (blank lines skipped)."""
    with _open_binary(path) as stream:
        for number, data in enumerate(stream, start=1):
            where = f"{path}:{number}"
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
                yield Record(where, raw, None, f"not UTF-8: {err}")
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                yield Record(where, text, parse_line(text))
            except InvalidDocument as err:
                yield Record(where, text, None, str(err))


def mongodb_sources(database: Any, collections: Sequence[str], batch_size: int) -> list[Source]:
    """Sources reading ``collections`` of a pymongo ``Database`` (in ``_id`` order)."""
    sources = []
    for name in collections:
        coll = database.get_collection(name, codec_options=CODEC_OPTIONS)
        sources.append(
            Source(
                name,
                f"mongodb {database.name}.{name}",
                _mongo_reader(coll, batch_size),
                count=_mongo_counter(coll),
            )
        )
    return sources


def _mongo_reader(coll: Any, batch_size: int) -> Callable[[], Iterator[Record]]:
    def records() -> Iterator[Record]:
        for raw_doc in coll.find({}, batch_size=batch_size).sort("_id", 1):
            raw_id = raw_doc.get("_id")
            where = f"{coll.name} _id {_id_text(raw_id)}"
            if value_too_deep(raw_doc):
                # Not dumped: json_util's conversion recurses.
                yield Record(where, _id_json(raw_id), None, _TOO_DEEP)
                continue
            raw = json_util.dumps(raw_doc, json_options=json_util.CANONICAL_JSON_OPTIONS)
            try:
                doc = to_store_json(raw_doc)
            except InvalidDocument as err:
                yield Record(where, raw, None, str(err))
                continue
            yield Record(where, raw, doc)

    return records


def _mongo_counter(coll: Any) -> Callable[[], int]:
    def count() -> int:
        return int(coll.count_documents({}))

    return count


def _id_json(value: Any) -> str:
    """``{"_id": ...}`` as canonical extended JSON (the raw text of a document too deep)."""
    if value_too_deep(value):
        return "{}"
    return json_util.dumps({"_id": value}, json_options=json_util.CANONICAL_JSON_OPTIONS)


def _id_text(value: Any) -> str:
    if value_too_deep(value):
        return "(an _id nested too deep)"
    try:
        converted = to_store_json(value)
    except InvalidDocument:
        return repr(value)
    return str(converted)


# -- target ----------------------------------------------------------------------------


@dataclass
class _Pending:
    """A document checked and ready: where it came from, its id, its JSON text."""

    where: str
    raw: str
    id: str
    text: str
    #: A maintenance event's eventId (``None`` for health events).
    event_id: str | None


@dataclass
class _Batch:
    """Up to a batch size of documents read: the good ones, the rejects, the COPY payload.

    Built where the reading happens (this thread, or a parser process for big
    files) and handed to the writer as one object.
    """

    read: int
    pendings: list[_Pending]
    #: (where, reason, raw, id) of documents that failed to read or check.
    rejects: list[tuple[str, str, str, str | None]]
    payload: bytes


def _batches(
    records: Iterable[Record], collection: str, batch_size: int, payload: bool
) -> Iterator[_Batch]:
    """Check and serialise ``records`` into batches of ``batch_size`` good documents."""
    read = 0
    pendings: list[_Pending] = []
    rejects: list[tuple[str, str, str, str | None]] = []
    maintenance = collection == "maintenance_events"
    for record in records:
        read += 1
        doc = record.document
        if doc is None:
            rejects.append((record.where, record.error or "unreadable", record.raw, None))
            continue
        try:
            doc_id = check_document(collection, doc)
            text = _dump(doc)
        except InvalidDocument as err:
            rejects.append((record.where, str(err), record.raw, _safe_id(doc)))
            continue
        event_id = _event_id(doc) if maintenance else None
        pendings.append(_Pending(record.where, record.raw, doc_id, text, event_id))
        if len(pendings) >= batch_size:
            yield _Batch(read, pendings, rejects, copy_payload(pendings) if payload else b"")
            read, pendings, rejects = 0, [], []
    if read:
        yield _Batch(read, pendings, rejects, copy_payload(pendings) if payload else b"")


def _batch_frames(path: str, collection: str, batch_size: int, payload: bool) -> None:
    """The parser process: pickled frames of one file's batches on stdout, then an end frame.

    Frames are plain tuples (no classes of this module, which runs here under
    another name): ``("batch", read, pendings, rejects, payload)``, then
    ``("end",)`` or ``("error", message)``.
    """
    out = sys.stdout.buffer
    try:
        for batch in _batches(read_file(Path(path)), collection, batch_size, payload):
            pendings = [(p.where, p.raw, p.id, p.text, p.event_id) for p in batch.pendings]
            frame = ("batch", batch.read, pendings, batch.rejects, batch.payload)
            pickle.dump(frame, out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(("end",), out)
    except Exception as err:
        pickle.dump(("error", f"{type(err).__name__}: {err}"), out)
    out.flush()


_PARSER_CODE: Final = (
    "import sys; from nvsentinel_store.migrate import _batch_frames; "
    "_batch_frames(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1')"
)


def _file_batches_in_child(
    path: Path, collection: str, batch_size: int, payload: bool
) -> Iterator[_Batch]:
    """The batches of a file, read and parsed by a separate Python process.

    Parsing costs about as much CPU per document as the database's work; in
    this process it would compete for the GIL with the writer thread, in its
    own process it runs on another core. The child is this interpreter
    (``sys.executable``) running :func:`_batch_frames`.
    """
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PARSER_CODE,
                str(path),
                collection,
                str(batch_size),
                "1" if payload else "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        try:
            while True:
                try:
                    frame = pickle.load(proc.stdout)
                except EOFError:
                    proc.wait()
                    errors.seek(0)
                    tail = errors.read().decode(errors="replace").strip().splitlines()[-3:]
                    raise ConfigError(
                        f"{path}: the parser process ended early (exit {proc.returncode}): "
                        + " / ".join(tail)
                    ) from None
                if frame[0] == "end":
                    return
                if frame[0] == "error":
                    raise ConfigError(f"{path}: reading failed: {frame[1]}")
                _, read, pendings, rejects, data = frame
                yield _Batch(read, [_Pending(*p) for p in pendings], rejects, data)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.terminate()
            proc.wait()


def copy_payload(batch: Sequence[_Pending]) -> bytes:
    """The batch as COPY text rows ``seq<TAB>document``.

    The documents are ``json.dumps`` output with ASCII escapes, so they hold no
    tab, newline or carriage return; COPY's only other special character, the
    backslash, is doubled. Built in the reading thread, so that the writer
    thread hands the server one buffer and holds the GIL only briefly.
    """
    return "".join(
        [f"{seq}\t{p.text.replace(chr(92), chr(92) * 2)}\n" for seq, p in enumerate(batch)]
    ).encode("ascii")


#: What a batch write did: the ids inserted, the documents refused with the reason, and
#: the positions in the batch of documents whose ``_id`` is stored with other content
#: (``None``: not compared by the write, see :meth:`_Importer.stored`).
_WriteResult = tuple[set[str], list[tuple[_Pending, str]], set[int] | None]


class _Sampler:
    """A uniform sample of up to ``size`` documents (reservoir sampling, Li's algorithm L).

    Draws a random number only when an item is taken, not for every item seen.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seen = 0
        self.items: list[tuple[str, str]] = []
        self._rng = random.Random(seed)
        self._w = 1.0
        self._next = size

    def _skip(self) -> None:
        self._w *= math.exp(math.log(self._rng.random() or 1e-300) / self.size)
        gap = math.log(self._rng.random() or 1e-300) / math.log1p(-self._w)
        self._next += int(gap) + 1

    def offer(self, doc_id: str, document: str) -> None:
        index = self.seen
        self.seen += 1
        if index < self.size:
            self.items.append((doc_id, document))
            if self.seen == self.size:
                self._skip()
            return
        if index == self._next:
            self.items[self._rng.randrange(self.size)] = (doc_id, document)
            self._skip()


def check_target(conn: Conn, collections: Sequence[str], *, need_owner: bool) -> None:
    """Fail early, naming the fix, when the tables are missing or not owned as needed."""
    for name in collections:
        row = conn.execute(
            "SELECT c.oid IS NOT NULL, pg_has_role(c.relowner, 'USAGE'), "
            "pg_get_userbyid(c.relowner)::text, has_table_privilege(c.oid, 'INSERT') "
            "FROM (SELECT to_regclass(%s) AS oid) AS r LEFT JOIN pg_class AS c ON c.oid = r.oid",
            (f"public.{name}",),
        ).fetchone()
        if row is None or not row[0]:
            raise ConfigError(
                f"table {name} does not exist in the target database: apply the schema first "
                "(nvsentinel-store schema apply, or the chart's schema Job)"
            )
        if need_owner and not row[1]:
            raise ConfigError(
                f"importing without change events disables {name}'s change log trigger "
                f"({CHANGE_LOG_TRIGGER[name]}) for each batch, which only the table's owner "
                f"({row[2]}) may do; connect as {row[2]} "
                "(DATASTORE_USERNAME and its client certificate, postgresql-migration-cert), or "
                "pass --capture-changes to import as the application and let consumers receive "
                "every imported document as a new insert"
            )
        if not row[3]:
            raise ConfigError(f"the target user may not INSERT into {name}")
    conn.commit()


class _Importer:
    """Moves checked documents of one collection into its table, batch by batch."""

    def __init__(self, conn: Conn, collection: str, options: MigrateOptions) -> None:
        self.conn = conn
        self.collection = collection
        self.options = options
        self.table = sql.Identifier(collection)
        self.trigger = sql.Identifier(CHANGE_LOG_TRIGGER[collection])
        self._staging_ready = False

    def _staging(self) -> None:
        if self._staging_ready:
            return
        self.conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS nvsentinel_migrate_staging "
            "(seq integer NOT NULL, document jsonb NOT NULL) ON COMMIT DELETE ROWS"
        )
        self.conn.commit()
        self._staging_ready = True

    def write(self, batch: list[_Pending], payload: bytes) -> _WriteResult:
        """Insert ``batch``; returns the ids inserted and the (document, reason) refused.

        ``payload`` is the batch as COPY text (see :func:`copy_payload`).
        """
        if self.options.dry_run:
            return set(), [], None
        self._staging()
        try:
            with self.conn.transaction():
                self._capture(False)
                with self.conn.cursor() as cur:
                    with cur.copy(
                        "COPY nvsentinel_migrate_staging (seq, document) FROM STDIN"
                    ) as copy:
                        copy.write(payload)
                    cur.execute(
                        sql.SQL(
                            "INSERT INTO {} (document) SELECT document "
                            "FROM nvsentinel_migrate_staging ORDER BY seq "
                            "ON CONFLICT DO NOTHING RETURNING " + _ID_TEXT
                        ).format(self.table)
                    )
                    inserted = {str(r[0]) for r in cur.fetchall()}
                    # Compared where the documents already are, before the
                    # staging rows go at commit: nothing more is sent.
                    cur.execute(
                        sql.SQL(
                            "SELECT st.seq FROM nvsentinel_migrate_staging AS st JOIN {} AS s "
                            "ON s.id = nvsentinel_document_uuid(st.document -> '_id') "
                            "WHERE s.document IS DISTINCT FROM st.document"
                        ).format(self.table)
                    )
                    differ = {int(r[0]) for r in cur.fetchall()}
                self._capture(True)
            return inserted, [], differ
        except psycopg.OperationalError:
            raise
        except psycopg.DatabaseError:
            # One document the database refuses (e.g. a date out of range) must
            # not cost the others: insert one by one, each in a savepoint.
            return self._write_one_by_one(batch)

    def _write_one_by_one(self, batch: list[_Pending]) -> _WriteResult:
        inserted: set[str] = set()
        refused: list[tuple[_Pending, str]] = []
        query = sql.SQL(
            "INSERT INTO {} (document) VALUES (%s::jsonb) ON CONFLICT DO NOTHING RETURNING "
            + _ID_TEXT
        ).format(self.table)
        with self.conn.transaction():
            self._capture(False)
            for pending in batch:
                try:
                    with self.conn.transaction():
                        row = self.conn.execute(query, (pending.text,)).fetchone()
                except psycopg.OperationalError:
                    raise
                except psycopg.DatabaseError as err:
                    refused.append((pending, f"refused by PostgreSQL: {_first_line(err)}"))
                    continue
                if row is not None:
                    inserted.add(str(row[0]))
            self._capture(True)
        return inserted, refused, None

    def _capture(self, on: bool) -> None:
        if self.options.capture_changes:
            return
        verb = sql.SQL("ENABLE" if on else "DISABLE")
        self.conn.execute(
            sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(self.table, verb, self.trigger)
        )

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the table holds."""
        if not ids:
            return set()
        rows = self.conn.execute(
            sql.SQL("SELECT " + _ID_TEXT + " FROM {} WHERE " + _IDS_MATCH).format(self.table),
            (list(ids),),
        ).fetchall()
        self.conn.commit()
        return {str(r[0]) for r in rows}

    def stored(self, pendings: Sequence[_Pending]) -> dict[int, bool]:
        """Which of ``pendings`` the table holds under their ``_id``: index -> same content.

        Compared as jsonb (key order and number spelling do not matter). Should
        the database refuse a document's text (possible in a dry run, which
        writes nothing), the stored copies are compared here instead.
        """
        if not pendings:
            return {}
        ids = [p.id for p in pendings]
        texts = [p.text for p in pendings]
        try:
            with self.conn.transaction():
                rows = self.conn.execute(
                    sql.SQL(
                        "SELECT t.n, s.document = t.doc::jsonb FROM unnest(%s::text[], %s::text[]) "
                        "WITH ORDINALITY AS t(id, doc, n) JOIN {} AS s "
                        "ON s.id = nvsentinel_document_uuid(to_jsonb(t.id))"
                    ).format(self.table),
                    (ids, texts),
                ).fetchall()
            self.conn.commit()
            return {int(r[0]) - 1: bool(r[1]) for r in rows}
        except psycopg.OperationalError:
            raise
        except psycopg.DatabaseError:
            self.conn.rollback()
        rows = self.conn.execute(
            sql.SQL("SELECT " + _ID_TEXT + ", document FROM {} WHERE " + _IDS_MATCH).format(
                self.table
            ),
            (ids,),
        ).fetchall()
        self.conn.commit()
        held = {str(r[0]): r[1] for r in rows}
        return {
            i: json_equal(json.loads(p.text), held[p.id])
            for i, p in enumerate(pendings)
            if p.id in held
        }

    def event_id_owners(self, event_ids: Sequence[str]) -> dict[str, str]:
        """eventId -> id of the stored maintenance events that hold those eventIds."""
        if not event_ids or self.collection != "maintenance_events":
            return {}
        rows = self.conn.execute(
            "SELECT event_id, " + _ID_TEXT + " FROM maintenance_events WHERE event_id = ANY(%s)",
            (list(event_ids),),
        ).fetchall()
        self.conn.commit()
        return {str(r[0]): str(r[1]) for r in rows}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    samplers = {c: _Sampler(options.sample_size) for c in collections}
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
        report.summaries[collection].target_count = _count(conn, collection)
    if options.verify:
        report.verify = {
            c: _verify(conn, report.summaries[c], seen_ids[c], samplers[c], counters.get(c))
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
        sampler: _Sampler,
        on_progress: ProgressCallback | None,
        on_reject: RejectCallback | None,
        executor: ThreadPoolExecutor,
        on_conflict: ConflictCallback | None = None,
    ) -> None:
        self.importer = _Importer(conn, collection, options)
        self.executor = executor
        self.in_flight: tuple[list[_Pending], Future[_WriteResult]] | None = None
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
        options = self.options
        payload = not options.dry_run
        threshold = options.subprocess_min_bytes
        batches: Iterator[_Batch]
        if (
            source.path is not None
            and threshold is not None
            and source.path.stat().st_size >= threshold
        ):
            batches = _file_batches_in_child(
                source.path, self.collection, options.batch_size, payload
            )
        else:
            batches = _batches(source.records(), self.collection, options.batch_size, payload)
        for batch in batches:
            self.summary.read += batch.read
            for where, reason, raw, doc_id in batch.rejects:
                self.reject(where, reason, raw, doc_id)
            if batch.pendings:
                self.flush(batch)
            else:
                self.progress()

    def reject(self, where: str, reason: str, raw: str, doc_id: str | None = None) -> None:
        self.summary.rejected += 1
        if self.on_reject is not None:
            self.on_reject(Reject(self.collection, where, reason, raw, doc_id))

    def flush(self, batch: _Batch) -> None:
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
                f"(nothing of that batch was stored; run again to continue): {_first_line(err)}"
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


def _event_id(doc: dict[str, Any]) -> str:
    return str(doc.get("eventId", doc.get("eventid")))


def _safe_id(doc: dict[str, Any]) -> str | None:
    value = doc.get("_id")
    return None if value is None else str(value)


def _count(conn: Conn, collection: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(collection))
    ).fetchone()
    conn.commit()
    return int(row[0]) if row else 0


# -- verify ----------------------------------------------------------------------------


def differences(source: Any, target: Any, path: str = "") -> list[str]:
    """The paths where two JSON documents differ (``True`` is not ``1``; key order ignored)."""
    here = path or "(document)"
    if isinstance(source, dict) and isinstance(target, dict):
        out: list[str] = []
        for key in sorted(source.keys() | target.keys()):
            sub = f"{path}.{key}" if path else key
            if key not in target:
                out.append(f"{sub}: missing in PostgreSQL")
            elif key not in source:
                out.append(f"{sub}: only in PostgreSQL")
            else:
                out.extend(differences(source[key], target[key], sub))
        return out
    if isinstance(source, list) and isinstance(target, list) and len(source) == len(target):
        out = []
        for i, (a, b) in enumerate(zip(source, target, strict=True)):
            out.extend(differences(a, b, f"{path}[{i}]"))
        return out
    if json_equal(source, target):
        return []
    return [f"{here}: source {_short(source)} != PostgreSQL {_short(target)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _verify(
    conn: Conn,
    summary: CollectionSummary,
    ids: set[str],
    sampler: _Sampler,
    source_counter: Callable[[], int] | None,
) -> VerifyResult:
    collection = summary.collection
    table = sql.Identifier(collection)
    found = 0
    missing: list[str] = []
    id_list = sorted(ids)
    for start in range(0, len(id_list), 10_000):
        chunk = id_list[start : start + 10_000]
        rows = conn.execute(
            sql.SQL("SELECT " + _ID_TEXT + " FROM {} WHERE " + _IDS_MATCH).format(table), (chunk,)
        ).fetchall()
        held = {str(r[0]) for r in rows}
        found += len(held)
        if len(missing) < 20:
            missing.extend(i for i in chunk if i not in held)
    stored: dict[str, Any] = {}
    sample_ids = [doc_id for doc_id, _ in sampler.items]
    if sample_ids:
        rows = conn.execute(
            sql.SQL("SELECT " + _ID_TEXT + ", document FROM {} WHERE " + _IDS_MATCH).format(table),
            (sample_ids,),
        ).fetchall()
        stored = {str(r[0]): r[1] for r in rows}
    target_count = _count(conn, collection)
    mismatches = []
    for doc_id, text in sampler.items:
        if doc_id not in stored:
            continue  # counted as missing above
        diff = differences(json.loads(text), stored[doc_id])
        if diff:
            mismatches.append(Mismatch(doc_id, tuple(diff)))
    source_count = summary.read if source_counter is None else source_counter()
    return VerifyResult(
        collection=collection,
        source_count=source_count,
        read=summary.read,
        rejected=summary.rejected,
        expected=len(ids),
        found=found,
        target_count=target_count,
        sampled=len(sampler.items),
        missing_ids=missing[:20],
        mismatches=mismatches,
    )


def write_reject(stream: IO[str], reject: Reject) -> None:
    """One rejects-file line: JSON with collection, where, id, reason and ``raw``, the
    document's text exactly as read (a mongoexport line, or canonical extended JSON
    for a live source)."""
    stream.write(json.dumps(reject.as_dict(), ensure_ascii=False) + "\n")
