"""One connection with the operator's settings, for the commands that need no pool."""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from nvsentinel_store.config import Settings, postgres_conninfo
from nvsentinel_store.errors import StoreUnavailableError


def connect(settings: Settings, *, autocommit: bool) -> psycopg.Connection[TupleRow]:
    """A connection to the database of ``settings``; unreachable is a
    :class:`~nvsentinel_store.errors.StoreUnavailableError` naming where and as whom."""
    try:
        return psycopg.connect(postgres_conninfo(settings), autocommit=autocommit)
    except psycopg.OperationalError as err:
        reason = " ".join(str(err).split())
        raise StoreUnavailableError(
            f"cannot connect to {settings.host}:{settings.port}/{settings.database} "
            f"as {settings.username}: {reason}"
        ) from err
