"""A real PostgreSQL server (with pgvector) for tests: ``pgserver`` starts one in about a second,
listening only on a Unix socket in a temp folder; stopped and deleted at the end of the session.

``tests/conftest.py`` shares it: a test asks for it with a ``postgres_server``
argument (the server's URI, ``postgresql://postgres:@/postgres?host=<socket dir>``).
"""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(scope="session")
def postgres_server():
    pgserver = pytest.importorskip("pgserver")
    # not under pytest's temp root: it is private to this user (0700), and under root pgserver runs
    # PostgreSQL as its own user, which must reach the folder
    folder = tempfile.mkdtemp(prefix="deepmemory-pg-")
    os.chmod(folder, 0o755)
    server = pgserver.get_server(folder, cleanup_mode="delete")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        yield server.get_uri()
    finally:
        server.cleanup()
