"""The README's 'several replicas' block runs as written, in real replica processes over one real
PostgreSQL (``pgserver``): each replica serves the model trained in another process, and sees a
deactivation made after it started within the refresh delay."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pgserver")
pytest.importorskip("llama_index.vector_stores.postgres")

ROOT = Path(__file__).resolve().parents[2]
N_REPLICAS = 2
N_QUERIES = 8
READ_LIMIT_S = 90.0  # a replica's first answer loads torch and the embedding model
NO_MODEL = "no active Deep Memory model"
FAST = dict(epochs=10, validation_folds=2, refit=False)  # a small training: the replicas are the point


def replicas_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"### Several processes, one store\n.*?\*\*Several replicas[^\n]*\n.*?```python\n(.*?)```",
                      text, re.S)
    assert match, "README.md lost its 'Several replicas' python block under 'Several processes, one store'"
    return match.group(1)


class Replica:
    """One ``python -c BLOCK`` process; its stdout lines are read by a thread, so no read blocks forever."""

    def __init__(self, code: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def ask(self, question: str, limit: float = READ_LIMIT_S) -> str:
        self.process.stdin.write(question.replace("\n", " ") + "\n")
        self.process.stdin.flush()
        try:
            return self.lines.get(timeout=limit)
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"replica gave no answer in {limit} s; stderr: {self.process.stderr.read()[-2000:]}")

    def close(self) -> None:
        """End of input: the block's loop ends and the process exits."""
        if self.process.poll() is None:
            self.process.stdin.close()

    def wait(self) -> str:
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.stderr.read()


@pytest.mark.slow  # two processes load torch and the embedding model on a 2-core machine
def test_readme_replicas_serve_one_model_and_see_its_deactivation(tmp_path: Path, postgres_server, minilm) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.postgres import PGVectorStore

    from keyless import make_beir
    from llama_index_deepmemory import DeepMemoryVectorStore, embed_nodes, load_beir
    from llama_index_deepmemory.deep_memory.state import REFRESH_SECONDS

    code = replicas_block()
    assert len(code.strip().splitlines()) <= 20, "keep the README example short"
    assert "default_embedding()" in code and 'table_name="docs"' in code
    env = dict(os.environ, DATABASE_URL=postgres_server, DEEPMEMORY_MODELS=str(tmp_path / "models"))
    # start the replicas first: their imports and model loading overlap the setup below
    replicas = [Replica(code, env) for _ in range(N_REPLICAS)]
    try:
        # setup, as an operator would: ingest through the same table, train once (this process)
        beir = load_beir(make_beir(tmp_path / "beir"))
        rest = postgres_server.split("://", 1)[1]
        engine = PGVectorStore(connection_string=f"postgresql+psycopg2://{rest}", table_name="docs", embed_dim=384,
                               async_connection_string=f"postgresql+asyncpg://{rest}")
        store = DeepMemoryVectorStore(vector_store=engine, model_dir=env["DEEPMEMORY_MODELS"], embed_model=minilm)
        store.clear()  # the session's server may hold a 'docs' table from elsewhere
        store.add(embed_nodes(beir.nodes(), minilm))
        store.deep_memory.train(*beir.query_relevance("train"), seed=0, **FAST)
        assert store.deep_memory.get_model() is not None, "the training did not activate its model"
        retriever = VectorStoreIndex.from_vector_store(store, embed_model=minilm).as_retriever(
            similarity_top_k=5, vector_store_kwargs={"deep_memory": True})
        test_queries, test_relevance = beir.query_relevance("test")
        questions = test_queries[:N_QUERIES]
        expected = [retriever.retrieve(q)[0].node.node_id for q in questions]
        plain_retriever = VectorStoreIndex.from_vector_store(store, embed_model=minilm).as_retriever(similarity_top_k=1)
        plain = [plain_retriever.retrieve(q)[0].node.node_id for q in questions]
        truth = [rows[0][0] for rows in test_relevance[:N_QUERIES]]  # each test query's one relevant chunk
        hits, plain_hits = sum(e == t for e, t in zip(expected, truth)), sum(p == t for p, t in zip(plain, truth))
        assert hits >= N_QUERIES // 2 and hits > plain_hits, (hits, plain_hits)

        for replica in replicas:  # each serves the model trained here, as this process ranks with it
            assert [replica.ask(q) for q in questions] == expected

        store.deep_memory.set_model(None)  # deactivate here, after the replicas started
        deactivated = time.monotonic()
        for replica in replicas:
            answer = replica.ask(questions[0])
            while NO_MODEL not in answer and time.monotonic() - deactivated < REFRESH_SECONDS + 2.0:
                time.sleep(0.05)
                answer = replica.ask(questions[0])
            assert NO_MODEL in answer, answer
        assert time.monotonic() - deactivated < REFRESH_SECONDS + 2.0
    finally:
        for replica in replicas:
            replica.close()
        errors = [replica.wait() for replica in replicas]
    assert all(replica.process.returncode == 0 for replica in replicas), errors
