"""The PostgreSQL envelope store, for a relay made of several processes on one database.

:mod:`~p2paid.storage.pg.schema` creates and migrates the tables (a schema-version table;
``p2paid relay migrate``); :mod:`~p2paid.storage.pg.store` is :class:`PgStore`, the second
implementation of the :class:`~p2paid.storage.base.EnvelopeStore` port, with the shared
tables a relay cluster keeps its limits, tokens and processes in. Needs the
``postgresql`` extra (psycopg 3 and psycopg_pool); its synchronous API is thread-safe,
and the relay calls it from worker threads.
"""
