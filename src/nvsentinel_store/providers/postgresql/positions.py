"""Change positions, resume tokens and the consumers' stored positions.

A position is ``(position_txid, id)`` of a ``datastore_changelog`` row (see
:mod:`nvsentinel_store.providers.postgresql.changestream` for why it is
sound); a resume token is a position and the store's epoch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from nvsentinel_store.errors import HistoryLostError, QueryError
from nvsentinel_store.store import (
    ResumeToken,
)

_TOKEN_RE: Final = re.compile(r"^[0-9a-f]{48}$")


@dataclass(frozen=True, order=True)
class Position:
    """A point in a collection's change history: after change ``(position_txid, id)``."""

    txid: int
    change_id: int

    def token(self, epoch: int) -> ResumeToken:
        """This position as a resume token of the store's ``epoch``."""
        return {"_data": f"{self.txid:016x}{self.change_id:016x}{epoch:016x}"}

    @classmethod
    def from_token(cls, token: Mapping[str, Any]) -> Position:
        return decode_token(token)[0]

    def __str__(self) -> str:
        return f"{self.txid}:{self.change_id}"


START: Final = Position(0, 0)


def decode_token(token: Mapping[str, Any]) -> tuple[Position, int]:
    """The position and epoch of a resume token."""
    data = token.get("_data") if isinstance(token, Mapping) else None
    if not isinstance(data, str) or not _TOKEN_RE.match(data):
        raise QueryError(
            f"not a PostgreSQL resume token: {token!r} (expected {{'_data': <48 hex digits>}})"
        )
    return Position(int(data[:16], 16), int(data[16:32], 16)), int(data[32:], 16)


_EPOCH_SQL: Final = """
SELECT e.epoch, e.system_identifier, s.system_identifier
  FROM datastore_epoch AS e, pg_control_system() AS s
"""


def read_epoch(conn: psycopg.Connection[Any]) -> int:
    """The store's token epoch; :class:`HistoryLostError` on a restored, unadopted server."""
    row = conn.execute(_EPOCH_SQL).fetchone()
    if row is None:
        raise HistoryLostError(
            "table datastore_epoch is empty: the store's change positions cannot be trusted; "
            "apply the schema migrations (nvsentinel-store schema apply)"
        )
    if int(row[1]) != int(row[2]):
        raise HistoryLostError(
            f"the store was restored from a backup of another server (positions belong to "
            f"server {row[1]}, this is server {row[2]}); change positions are not valid here "
            "until the migration role runs SELECT * FROM datastore_adopt_restore() "
            "(see docs/backup-restore.md)"
        )
    return int(row[0])


_SAVE_SQL: Final = """
INSERT INTO datastore_consumer_positions (client_name, collection, position_txid, change_id)
VALUES (%(name)s, %(coll)s, %(txid)s::xid8, %(cid)s)
ON CONFLICT (client_owner, client_name, collection) DO UPDATE
   SET position_txid = excluded.position_txid, change_id = excluded.change_id,
       updated_at = now(), expired_at = NULL
"""

_LOAD_SQL: Final = """
SELECT position_txid::text, change_id, expired_at FROM datastore_consumer_positions
 WHERE client_owner = current_user AND client_name = %(name)s AND collection = %(coll)s
"""


def load_token(conn: psycopg.Connection[Any], client_name: str, collection: str) -> Position | None:
    row = conn.execute(_LOAD_SQL, {"name": client_name, "coll": collection}).fetchone()
    return None if row is None else Position(int(row[0]), int(row[1]))


def save_token(
    conn: psycopg.Connection[Any], client_name: str, collection: str, position: Position
) -> None:
    conn.execute(
        _SAVE_SQL,
        {
            "name": client_name,
            "coll": collection,
            "txid": str(position.txid),
            "cid": position.change_id,
        },
    )


def delete_token(conn: psycopg.Connection[Any], client_name: str, collection: str) -> bool:
    cur = conn.execute(
        "DELETE FROM datastore_consumer_positions WHERE client_owner = current_user "
        "AND client_name = %s AND collection = %s",
        (client_name, collection),
    )
    return cur.rowcount > 0
