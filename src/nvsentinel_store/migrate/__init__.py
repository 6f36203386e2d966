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
:meth:`~nvsentinel_store.providers.postgresql.provider.PostgresCollection.insert_one`
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

This package never prints: it reports through the ``on_progress``,
``on_reject`` and ``on_conflict`` callbacks and returns a
:class:`MigrationReport`. A source that fails partway raises
:class:`~nvsentinel_store.errors.ImportFailedError`; the batches committed
before stay.

Its modules, one job each: :mod:`~nvsentinel_store.migrate.convert` (BSON and
extended JSON to the store's JSON, document checks),
:mod:`~nvsentinel_store.migrate.sources` (files, live MongoDB),
:mod:`~nvsentinel_store.migrate.batches` (checked documents grouped for COPY),
:mod:`~nvsentinel_store.migrate.parser` (big files parsed by a child process),
:mod:`~nvsentinel_store.migrate.importer` (COPY into the tables),
:mod:`~nvsentinel_store.migrate.sampler` and
:mod:`~nvsentinel_store.migrate.verify` (``--verify``),
:mod:`~nvsentinel_store.migrate.run` (the orchestration),
:mod:`~nvsentinel_store.migrate.options` and
:mod:`~nvsentinel_store.migrate.results` (what goes in and comes out), and
:mod:`~nvsentinel_store.migrate.cli` (the ``nvsentinel-store migrate`` command).
The names below are the library's; import them from here.
"""

from __future__ import annotations

from nvsentinel_store.migrate.options import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLE_SIZE, MigrateOptions
from nvsentinel_store.migrate.results import (
    CollectionSummary,
    Conflict,
    MigrationReport,
    Mismatch,
    Progress,
    Reject,
    VerifyResult,
    write_reject,
)
from nvsentinel_store.migrate.run import migrate
from nvsentinel_store.migrate.sources import (
    FILE_SUFFIXES,
    Record,
    Source,
    collection_for_file,
    file_sources,
    mongodb_sources,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SAMPLE_SIZE",
    "FILE_SUFFIXES",
    "CollectionSummary",
    "Conflict",
    "MigrateOptions",
    "MigrationReport",
    "Mismatch",
    "Progress",
    "Record",
    "Reject",
    "Source",
    "VerifyResult",
    "collection_for_file",
    "file_sources",
    "migrate",
    "mongodb_sources",
    "write_reject",
]
