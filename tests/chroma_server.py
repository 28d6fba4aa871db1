"""A real Chroma server for tests: ``chroma run`` (shipped with chromadb) on 127.0.0.1 and a free
port, its data in a temp folder; ready within a bounded wait, stopped at the end of the session.

``tests/conftest.py`` shares it: a test asks for it with a ``chroma_server``
argument (``(host, port)`` for ``chromadb.HttpClient``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

READY_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    chromadb = pytest.importorskip("chromadb")
    command = shutil.which("chroma")
    if command is None:
        pytest.skip("the chroma command (chromadb's server) is not on PATH")
    port, log = free_port(), tmp_path_factory.mktemp("chroma-log") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([command, "run", "--host", "127.0.0.1", "--port", str(port),
                                   "--path", str(tmp_path_factory.mktemp("chroma-data"))],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chroma run did not become ready: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
