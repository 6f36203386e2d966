"""Datastore providers: ``postgresql`` (psycopg 3) and ``mongodb`` (pymongo)."""

from __future__ import annotations

from nvsentinel_store.config import Settings
from nvsentinel_store.store import Store


def open_store(settings: Settings) -> Store:
    """The store for ``settings.provider`` (imported on demand)."""
    if settings.provider == "postgresql":
        from nvsentinel_store.providers.postgresql.provider import PostgresStore

        return PostgresStore.from_settings(settings)
    from nvsentinel_store.providers.mongodb import MongoStore

    return MongoStore.from_settings(settings)
