"""Datastore providers: ``postgresql`` (psycopg 3) and ``mongodb`` (pymongo)."""
