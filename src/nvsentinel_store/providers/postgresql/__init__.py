"""The PostgreSQL provider and the tools that only PostgreSQL has.

- :mod:`~nvsentinel_store.providers.postgresql.provider`: the collection API
  (:class:`~nvsentinel_store.providers.postgresql.provider.PostgresStore`);
- :mod:`~nvsentinel_store.providers.postgresql.query`: filters as SQL;
- :mod:`~nvsentinel_store.providers.postgresql.connection`: one connection
  for the operators' commands;
- :mod:`~nvsentinel_store.providers.postgresql.migrations`: the schema
  migration applier;
- :mod:`~nvsentinel_store.providers.postgresql.health`: the ``health``
  command's checks;
- :mod:`~nvsentinel_store.providers.postgresql.changestream`: change streams
  (:class:`~nvsentinel_store.providers.postgresql.changestream.PostgresChangeStream`),
  with their positions and tokens (``positions``), events and filters
  (``change_events``) and wake-ups (``wakeup``).

Nothing is imported here, so that importing one module does not import them all
(the operators' commands import only what they run).
"""
