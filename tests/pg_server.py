"""A real PostgreSQL server (with pgvector) for tests: ``pgserver`` starts one in about a second,
listening only on a Unix socket in a temp folder; stopped and deleted at the end of the session.

Use it with ``from pg_server import postgres_server  # noqa: F401`` and a ``postgres_server``
argument (the server's URI, ``postgresql://postgres:@/postgres?host=<socket dir>``).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        yield server.get_uri()
    finally:
        server.cleanup()
