"""The target: the event tables, written batch by batch through COPY and a staging table.

Each batch is copied into a temporary staging table and moved with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in one transaction, which
(unless ``capture_changes``) disables the table's change log trigger for
its duration; see :mod:`nvsentinel_store.migrate` for why that is safe for
concurrent writers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from nvsentinel_store.errors import ConfigError
from nvsentinel_store.migrate.batches import Pending
from nvsentinel_store.migrate.options import MigrateOptions
from nvsentinel_store.query import json_equal
from nvsentinel_store.store import COLLECTIONS
from nvsentinel_store.text import first_line

Conn = psycopg.Connection[TupleRow]

#: The change log trigger of each event table (NVSentinel's log_table_changes, migration 0001).
CHANGE_LOG_TRIGGER: Final = {name: f"{name}_changes" for name in COLLECTIONS}
#: A stored document's ``_id`` as text, the form ``check_document`` returns; a
#: document NVSentinel's services wrote has none and is read with its row id, as
#: the store reads it.
ID_TEXT: Final = "coalesce(document ->> '_id', id::text)"
#: Rows whose documents have one of the ``_id`` texts of a ``text[]`` parameter
#: (the row id is derived from the ``_id`` as the extraction trigger does).
IDS_MATCH: Final = (
    "id IN (SELECT nvsentinel_document_uuid(to_jsonb(t)) FROM unnest(%s::text[]) AS t)"
)

#: What a batch write did: the ids inserted, the documents refused with the reason, and
#: the positions in the batch of documents whose ``_id`` is stored with other content
#: (``None``: not compared by the write, see :meth:`Importer.stored`).
WriteResult = tuple[set[str], list[tuple[Pending, str]], set[int] | None]


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


class Importer:
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

    def write(self, batch: list[Pending], payload: bytes) -> WriteResult:
        """Insert ``batch``; returns the ids inserted and the (document, reason) refused.

        ``payload`` is the batch as COPY text (see
        :func:`~nvsentinel_store.migrate.batches.copy_payload`).
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
                            "ON CONFLICT DO NOTHING RETURNING " + ID_TEXT
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

    def _write_one_by_one(self, batch: list[Pending]) -> WriteResult:
        inserted: set[str] = set()
        refused: list[tuple[Pending, str]] = []
        query = sql.SQL(
            "INSERT INTO {} (document) VALUES (%s::jsonb) ON CONFLICT DO NOTHING RETURNING "
            + ID_TEXT
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
                    refused.append((pending, f"refused by PostgreSQL: {first_line(err)}"))
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
            sql.SQL("SELECT " + ID_TEXT + " FROM {} WHERE " + IDS_MATCH).format(self.table),
            (list(ids),),
        ).fetchall()
        self.conn.commit()
        return {str(r[0]) for r in rows}

    def stored(self, pendings: Sequence[Pending]) -> dict[int, bool]:
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
            sql.SQL("SELECT " + ID_TEXT + ", document FROM {} WHERE " + IDS_MATCH).format(
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
            "SELECT event_id, " + ID_TEXT + " FROM maintenance_events WHERE event_id = ANY(%s)",
            (list(event_ids),),
        ).fetchall()
        self.conn.commit()
        return {str(r[0]): str(r[1]) for r in rows}


def count_rows(conn: Conn, collection: str) -> int:
    """The rows the collection's table holds."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(collection))
    ).fetchone()
    conn.commit()
    return int(row[0]) if row else 0
