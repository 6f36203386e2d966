"""Where documents come from: mongoexport files (plain or gzip) and a live MongoDB.

A :class:`Source` yields :class:`Record` objects, each a document as read
(with ``file:line`` or its ``_id``) and its conversion, or the reason it could
not be read. A source that fails partway (a file truncated or removed, a
MongoDB that stops answering) raises
:class:`~nvsentinel_store.errors.ImportFailedError` (or
:class:`~nvsentinel_store.errors.StoreUnavailableError` when the MongoDB
connection is lost) instead of ending early as if it were complete.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from bson import json_util

from nvsentinel_store.errors import ConfigError, ImportFailedError, StoreUnavailableError
from nvsentinel_store.migrate.convert import (
    CODEC_OPTIONS,
    TOO_DEEP,
    InvalidDocument,
    parse_line,
    to_store_json,
)
from nvsentinel_store.query import value_too_deep
from nvsentinel_store.store import COLLECTIONS
from nvsentinel_store.text import first_line

#: File name endings read from a directory.
FILE_SUFFIXES: Final = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")


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
    """The documents of one mongoexport file, one per line (blank lines skipped).

    A file that cannot be read to its end (removed, unreadable, a truncated or
    corrupt gzip stream) raises :class:`~nvsentinel_store.errors.ImportFailedError`
    naming the file and the last line read.
    """
    number = 0
    try:
        with _open_binary(path) as stream:
            for number, data in enumerate(stream, start=1):
                record = _file_record(f"{path}:{number}", data)
                if record is not None:
                    yield record
    except (OSError, EOFError, zlib.error) as err:
        raise ImportFailedError(
            f"{path}: cannot read the file past line {number}: {first_line(err)} (fix or "
            "replace the file and run again: documents already imported are recognised)"
        ) from err


def _file_record(where: str, data: bytes) -> Record | None:
    """One line as a record (``None`` for a blank line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
        return Record(where, raw, None, f"not UTF-8: {err}")
    text = text.rstrip("\r\n")
    if not text.strip():
        return None
    try:
        return Record(where, text, parse_line(text))
    except InvalidDocument as err:
        return Record(where, text, None, str(err))


def mongodb_sources(database: Any, collections: Sequence[str], batch_size: int) -> list[Source]:
    """Sources reading ``collections`` of a pymongo ``Database`` (in ``_id`` order)."""
    sources = []
    for name in collections:
        coll = database.get_collection(name, codec_options=CODEC_OPTIONS)
        sources.append(
            Source(
                name,
                f"mongodb {database.name}.{name}",
                mongo_reader(coll, batch_size),
                count=_mongo_counter(coll),
            )
        )
    return sources


def mongo_reader(coll: Any, batch_size: int) -> Callable[[], Iterator[Record]]:
    """The records of a pymongo collection, in ``_id`` order, ``batch_size`` per round trip."""

    def records() -> Iterator[Record]:
        with _mongo_failures(f"reading {coll.name}"):
            for raw_doc in coll.find({}, batch_size=batch_size).sort("_id", 1):
                yield _mongo_record(coll.name, raw_doc)

    return records


@contextlib.contextmanager
def _mongo_failures(doing: str) -> Iterator[None]:
    """pymongo's errors while ``doing`` as this package's: the connection lost, or another."""
    from pymongo.errors import ConnectionFailure, PyMongoError

    try:
        yield
    except ConnectionFailure as err:
        raise StoreUnavailableError(
            f"the MongoDB source was lost while {doing}: {first_line(err)} (run again: "
            "documents already imported are recognised)"
        ) from err
    except PyMongoError as err:
        raise ImportFailedError(
            f"the MongoDB source failed while {doing}: {first_line(err)} (run again: "
            "documents already imported are recognised)"
        ) from err


def _mongo_record(collection: str, raw_doc: Any) -> Record:
    raw_id = raw_doc.get("_id")
    where = f"{collection} _id {_id_text(raw_id)}"
    if value_too_deep(raw_doc):
        # Not dumped: json_util's conversion recurses.
        return Record(where, _id_json(raw_id), None, TOO_DEEP)
    raw = json_util.dumps(raw_doc, json_options=json_util.CANONICAL_JSON_OPTIONS)
    try:
        doc = to_store_json(raw_doc)
    except InvalidDocument as err:
        return Record(where, raw, None, str(err))
    return Record(where, raw, doc)


def _mongo_counter(coll: Any) -> Callable[[], int]:
    def count() -> int:
        with _mongo_failures(f"counting {coll.name}"):
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
