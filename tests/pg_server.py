"""A throwaway PostgreSQL server for tests: ``postgres_server`` (session scope) yields its URI.

pgserver runs a real postgres from its wheel on a Unix socket in a temporary folder (nothing
listens on the network); it starts in a few seconds and stops when the session ends. Tests that
need it are skipped where pgserver is not installed. Give each test its own table, schema or key.
"""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``postgresql://postgres:@/postgres?host=<socket folder>``, for SQLAlchemy, psycopg or asyncpg."""
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
