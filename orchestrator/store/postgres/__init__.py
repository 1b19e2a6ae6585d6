"""The PostgreSQL backend: psycopg 3 with a connection pool, any number of threads."""

from orchestrator.store.postgres.store import POSTGRES, PostgresStore, redact

__all__ = ["POSTGRES", "PostgresStore", "redact"]
