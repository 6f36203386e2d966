"""Records checked, serialised and grouped into the batches the importer writes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nvsentinel_store.migrate.convert import InvalidDocument, check_document, dump
from nvsentinel_store.migrate.sources import Record

#: A document that failed to read or check: (where, reason, raw text, id when known).
RejectRow = tuple[str, str, str, str | None]


@dataclass
class Pending:
    """A document checked and ready: where it came from, its id, its JSON text."""

    where: str
    raw: str
    id: str
    text: str
    #: A maintenance event's eventId (``None`` for health events).
    event_id: str | None


@dataclass
class Batch:
    """Up to a batch size of documents read: the good ones, the rejects, the COPY payload.

    Built where the reading happens (the reading thread, or a parser process
    for big files) and handed to the writer as one object.
    """

    read: int
    pendings: list[Pending]
    rejects: list[RejectRow]
    payload: bytes


def batches(
    records: Iterable[Record], collection: str, batch_size: int, payload: bool
) -> Iterator[Batch]:
    """Check and serialise ``records`` into batches of ``batch_size`` good documents.

    With ``payload`` each batch carries its COPY text (see :func:`copy_payload`).
    """
    read = 0
    pendings: list[Pending] = []
    rejects: list[RejectRow] = []
    maintenance = collection == "maintenance_events"
    for record in records:
        read += 1
        doc = record.document
        if doc is None:
            rejects.append((record.where, record.error or "unreadable", record.raw, None))
            continue
        try:
            doc_id = check_document(collection, doc)
            text = dump(doc)
        except InvalidDocument as err:
            rejects.append((record.where, str(err), record.raw, _safe_id(doc)))
            continue
        event_id = _event_id(doc) if maintenance else None
        pendings.append(Pending(record.where, record.raw, doc_id, text, event_id))
        if len(pendings) >= batch_size:
            yield Batch(read, pendings, rejects, copy_payload(pendings) if payload else b"")
            read, pendings, rejects = 0, [], []
    if read:
        yield Batch(read, pendings, rejects, copy_payload(pendings) if payload else b"")


def copy_payload(batch: Sequence[Pending]) -> bytes:
    """The batch as COPY text rows ``seq<TAB>document``.

    The documents are ``json.dumps`` output with ASCII escapes, so they hold no
    tab, newline or carriage return; COPY's only other special character, the
    backslash, is doubled. Built in the reading thread, so that the writer
    thread hands the server one buffer and holds the GIL only briefly.
    """
    return "".join(
        [f"{seq}\t{p.text.replace(chr(92), chr(92) * 2)}\n" for seq, p in enumerate(batch)]
    ).encode("ascii")


def _event_id(doc: dict[str, Any]) -> str:
    return str(doc.get("eventId", doc.get("eventid")))


def _safe_id(doc: dict[str, Any]) -> str | None:
    value = doc.get("_id")
    return None if value is None else str(value)
